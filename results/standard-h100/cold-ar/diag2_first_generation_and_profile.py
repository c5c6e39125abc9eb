"""Diagnostic: ar decode per-forward host/GPU time in a plain process."""
import time, torch
from pytest_dlmbench.models import get_spec, build_model
from pytest_dlmbench.paradigms import make_paradigm, ForwardLog
from pytest_dlmbench.paradigms.base import DecodeOptions
from pytest_dlmbench.timing import RegionTimer
dev = torch.device("cuda")
spec = get_spec("llama-3.1-8b")
model = build_model(spec, dev, torch.bfloat16)
print("attn", model.config._attn_implementation, getattr(model.config, "rope_parameters", None))
p = make_paradigm("ar", DecodeOptions(), "baseline")
ids = torch.randint(0, 1000, (1, 40), device=dev)
for i in range(3):
    log = ForwardLog(RegionTimer(dev))
    t = time.perf_counter()
    with torch.inference_mode():
        r = p.generate(model, spec, ids, 256, log)
    torch.cuda.synchronize()
    ms = r.forward_ms["decode"]
    print("run", i, "wall ms/forward", round((time.perf_counter() - t) / r.nfe * 1e3, 1), "decode ms by quarter",
          [round(sum(ms[k:k+64]) / len(ms[k:k+64]), 1) for k in range(0, 255, 64)], flush=True)
from torch.profiler import profile, ProfilerActivity
with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    p.generate(model, spec, ids, 64, ForwardLog(RegionTimer(dev)))
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8))
