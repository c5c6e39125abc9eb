"""Why is ar decode host-slow? time per forward under various conditions."""
import os, time, torch, subprocess
from pytest_dlmbench.models import get_spec, build_model
from pytest_dlmbench.paradigms import make_paradigm, ForwardLog
from pytest_dlmbench.paradigms.base import DecodeOptions
from pytest_dlmbench.timing import RegionTimer
from pytest_dlmbench.memory import MemoryTracker
print("nproc", os.cpu_count(), "threads", torch.get_num_threads(), os.getloadavg())
print(subprocess.run("lscpu | grep 'Model name'; ps -eo pcpu,comm --sort=-pcpu | head -5", shell=True, capture_output=True, text=True).stdout)
dev = torch.device("cuda")
for name, paradigm in (("llama-3.1-8b", "ar"), ("fast-dllm-v2-7b", "block")):
    spec = get_spec(name)
    model = build_model(spec, dev, torch.bfloat16)
    p = make_paradigm(paradigm, DecodeOptions(), "baseline")
    ids = torch.randint(0, 1000, (1, 40), device=dev)
    def run(n, tracked=False):
        log = ForwardLog(RegionTimer(dev))
        t = time.perf_counter()
        with torch.inference_mode(), (MemoryTracker(dev) if tracked else __import__("contextlib").nullcontext()):
            r = p.generate(model, spec, ids, n, log)
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / r.nfe * 1e3
    run(8)
    for label, tracked in (("plain", False), ("tracked", True), ("plain", False)):
        print(name, label, "ms/forward g64:", round(run(64, tracked), 2), flush=True)
    del model; torch.cuda.empty_cache()
