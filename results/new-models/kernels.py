"""Which kernels one forward of each new shape runs, under each runtime (bf16, random weights, B = 1):
an AR decode step at context 296 (qwen2.5-7b, qwen3-8b) and a full bidirectional forward over 296
positions (dream-7b, llada-moe-7b-a1b). Prints each forward's device time and its top kernels.
python results/new-models/kernels.py
"""

from __future__ import annotations

import collections

import torch
from torch.profiler import ProfilerActivity, profile

from pytest_dlmbench.models import build_model, get_spec
from pytest_dlmbench.runtimes import make_runtime
from pytest_dlmbench.runtimes.fused import UnsupportedArchitecture

CONTEXT = 296


def one_forward(runtime, spec):
    """A callable running the case's forward once on `runtime`."""
    ids = torch.randint(0, spec.prompt_vocab_limit, (1, CONTEXT), device="cuda")
    if spec.paradigm == "ar":
        cache = runtime.new_cache(1, CONTEXT + 1)
        runtime.forward(ids, 0, 1, cache, keep=True, attention="causal")
        return lambda: runtime.forward(ids[:, :1], CONTEXT, 1, cache)
    return lambda: runtime.forward(ids, 0, 32)


def main() -> None:
    for name in ("qwen2.5-7b", "qwen3-8b", "dream-7b", "llada-moe-7b-a1b"):
        spec = get_spec(name)
        model = build_model(spec, torch.device("cuda"), torch.bfloat16)
        for runtime_name in ("graphs", "eager"):
            try:
                runtime = make_runtime(runtime_name, model)
            except UnsupportedArchitecture as error:
                print(f"{name} {runtime_name}: refused: {error}\n")
                continue
            with torch.inference_mode():
                run = one_forward(runtime, spec)
                for _ in range(3):
                    run()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(20):
                    run()
                end.record()
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    run()
                    torch.cuda.synchronize()
            totals = collections.Counter()
            for event in prof.events():
                if event.device_type == torch.autograd.DeviceType.CUDA:
                    totals[event.name[:90]] += event.device_time
            print(f"{name} {runtime_name}: {start.elapsed_time(end) / 20:.2f} ms per forward; "
                  f"{sum(totals.values()) / 1e3:.2f} ms of kernels; top kernels (us):")
            for kernel, us in totals.most_common(8):
                print(f"  {us:9.1f}  {kernel}")
            print()
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
