"""Where one captured forward's device time goes: kernels of a graph replay, grouped, against the
replay's own time. python results/graph-runtime/profile_forward.py [--cases ...]

Cases (B = 1, bf16, random weights): llama-3.1-8b decode at context 984; llada-8b full forward at
L = 104 and 1176; fast-dllm-v2-7b 32-token block forward against a 928-position prefix.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from pytest_dlmbench.models import build_model, get_spec
from pytest_dlmbench.runtimes import graphs, make_runtime


def replay_ms(fn, repeats=30):
    """Device time per call: `repeats` calls queued back to back between two events, as a
    generation runs them, so the host's work before each replay overlaps the previous one.
    (Files before split-kv/profile-back-to-back.txt timed each call alone, which added the
    host's gap before the replay: 6.96 ms for llama's decode against 6.49 in the benchmark.)"""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def kernels(fn):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    groups = collections.Counter()
    counts = collections.Counter()
    for event in prof.key_averages():
        if event.device_time_total <= 0:
            continue
        name = event.key
        short = ("attention" if any(k in name.lower() for k in ("flash", "fmha", "cudnn", "attention"))
                 else "gemm/gemv" if any(k in name.lower() for k in ("gemm", "gemv", "cutlass", "sm90_xmma", "nvjet"))
                 else "elementwise/other")  # attention first: flash's kernels name cutlass types
        groups[short] += event.device_time_total / 1e3
        counts[short] += event.count
    return groups, counts, sum(counts.values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="ar,dlm104,dlm1176,block")
    args = parser.parse_args()
    device = torch.device("cuda")
    cases = {
        "ar": ("llama-3.1-8b", 984, 1),
        "dlm104": ("llada-8b", 104, None),
        "dlm1176": ("llada-8b", 1176, None),
        "block": ("fast-dllm-v2-7b", 928, 32),
    }
    built = {}
    with torch.inference_mode():
        for case in args.cases.split(","):
            name, length, span = cases[case]
            if name not in built:
                built.clear()
                torch.cuda.empty_cache()
                built[name] = build_model(get_spec(name), device, torch.bfloat16)
            model = built[name]
            for runtime_name in ("eager", "graphs", "graphs-uncompiled"):
                graphs.COMPILE = runtime_name == "graphs"
                runtime = make_runtime(runtime_name.partition("-")[0], model)
                ids = torch.randint(0, 1000, (1, length + (span or 0)), device=device)
                if span is None:  # one full bidirectional forward, block logits
                    rows = torch.arange(32, device=device) + length - 32
                    fn = lambda: runtime.forward(ids, 0, rows)  # noqa: E731
                else:  # prefix cached, then the span against it
                    cache = runtime.new_cache(1, length + span + 64)
                    runtime.forward(ids[:, :length], 0, 1, cache, keep=True)
                    rows = 1 if span == 1 else torch.arange(span, device=device)
                    fn = lambda: runtime.forward(ids[:, length : length + span], length, rows, cache)  # noqa: E731
                ms = replay_ms(fn)
                groups, counts, total = kernels(fn)
                print(f"{case} {runtime_name}: {ms:.2f} ms/forward; capture {runtime.capture_s or 0:.1f} s; kernels {total}; "
                      + "; ".join(f"{k} {groups[k]:.2f} ms x{counts[k]}" for k in sorted(groups)), flush=True)
                if runtime_name == "graphs" and case in ("ar", "dlm1176"):
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        fn()
                        torch.cuda.synchronize()
                    rows_ = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:16]
                    for e in rows_:
                        print(f"    {e.device_time_total / 1e3:7.3f} ms x{e.count:4d} {e.key[:110]}")


if __name__ == "__main__":
    main()
