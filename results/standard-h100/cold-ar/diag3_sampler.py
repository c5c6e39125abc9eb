"""Diagnostic: does the NVML sampler slow host-bound ar decoding?"""
import contextlib, time, torch
from pytest_dlmbench.models import get_spec, build_model
from pytest_dlmbench.paradigms import make_paradigm, ForwardLog
from pytest_dlmbench.paradigms.base import DecodeOptions
from pytest_dlmbench.timing import RegionTimer
from pytest_dlmbench.memory import MemoryTracker
dev = torch.device("cuda")
spec = get_spec("llama-3.1-8b")
model = build_model(spec, dev, torch.bfloat16)
p = make_paradigm("ar", DecodeOptions(), "baseline")
ids = torch.randint(0, 1000, (1, 40), device=dev)
for label, interval in (("plain", None), ("plain", None), ("tracked 5ms", 0.005), ("plain", None), ("tracked 5ms", 0.005), ("tracked 50ms", 0.05), ("tracked 5ms", 0.005)):
    log = ForwardLog(RegionTimer(dev))
    t = time.perf_counter()
    with torch.inference_mode(), (MemoryTracker(dev, interval) if interval else contextlib.nullcontext()):
        r = p.generate(model, spec, ids, 256, log)
    torch.cuda.synchronize()
    print(label, "wall ms/forward", round((time.perf_counter() - t) / r.nfe * 1e3, 1), flush=True)
