"""Which kernels one forward of each new shape runs, under each runtime (bf16, random weights, B = 1):
an AR decode step at context 296 (qwen2.5-7b, qwen3-8b) and a full bidirectional forward over 296
positions (dream-7b, llada-moe-7b-a1b). Prints each forward's time and its top kernels.
python results/new-models/profile_kernels.py [DEVICE [MODEL,...]]   (default: cuda and the four shapes;
CI runs it on the CPU with their tiny siblings, where the profile shows CPU operators.)
"""

from __future__ import annotations

import collections
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pytest_dlmbench.models import build_model, get_spec
from pytest_dlmbench.runtimes import make_runtime
from pytest_dlmbench.runtimes.fused import UnsupportedArchitecture

CONTEXT = 296


def one_forward(runtime, spec, device):
    """A callable running the case's forward once on `runtime`."""
    ids = torch.randint(0, spec.prompt_vocab_limit, (1, CONTEXT), device=device)
    if spec.paradigm == "ar":
        cache = runtime.new_cache(1, CONTEXT + 1)
        runtime.forward(ids, 0, 1, cache, keep=True, attention="causal")
        return lambda: runtime.forward(ids[:, :1], CONTEXT, 1, cache)
    return lambda: runtime.forward(ids, 0, 32)


def main(device_name: str = "cuda", names: tuple[str, ...] = ("qwen2.5-7b", "qwen3-8b", "dream-7b",
                                                                "llada-moe-7b-a1b")) -> None:
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    for name in names:
        spec = get_spec(name)
        model = build_model(spec, device, torch.bfloat16 if cuda else torch.float32)
        for runtime_name in ("graphs", "eager"):
            try:
                runtime = make_runtime(runtime_name, model)
            except UnsupportedArchitecture as error:
                print(f"{name} {runtime_name}: refused: {error}\n")
                continue
            with torch.inference_mode():
                run = one_forward(runtime, spec, device)
                for _ in range(3):
                    run()
                synchronize = torch.cuda.synchronize if cuda else (lambda: None)
                synchronize()
                began = time.perf_counter()
                for _ in range(20):
                    run()
                synchronize()
                elapsed_ms = (time.perf_counter() - began) * 1e3
                with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
                    run()
                    synchronize()
            totals: collections.Counter[str] = collections.Counter()
            for event in prof.events():
                if event.device_type == kind:
                    totals[event.name[:90]] += event.device_time if cuda else event.self_cpu_time_total
            print(f"{name} {runtime_name}: {elapsed_ms / 20:.2f} ms per forward; "
                  f"{sum(totals.values()) / 1e3:.2f} ms of {'kernels' if cuda else 'operators'}; top ones (us):")
            for kernel, us in totals.most_common(8):
                print(f"  {us:9.1f}  {kernel}")
            print()
        del model
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(*sys.argv[1:2], *([tuple(sys.argv[2].split(","))] if len(sys.argv) > 2 else []))
