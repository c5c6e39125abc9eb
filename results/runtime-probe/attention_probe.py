"""Which attention kernel a transformers forward runs, eager and replayed as a CUDA graph, and why
forcing a fused SDPA backend around it fails: the groundwork of a graph runtime.

    python results/runtime-probe/attention_probe.py [--model llada-8b] [--lengths 104,1176]

For each length: the arguments transformers passes to SDPA; each forced backend's outcome
(with PyTorch's own reasons); eager and graph-replay milliseconds and their top kernels, for
transformers' `sdpa` attention and for `plain_sdpa`, an attention function that calls SDPA with
no mask (bidirectional), registered through transformers' AttentionInterface.
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from transformers import AttentionInterface

from pytest_dlmbench.models import build_model, get_spec


def plain_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """query (B, H, q, D), key/value (B, KVH, k, D) -> (B, q, H, D); no mask: every key is attended."""
    out = F.scaled_dot_product_attention(query, key, value, scale=scaling, enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("plain_sdpa", plain_sdpa)


def spy_sdpa_arguments(model, ids):
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if not seen:
            seen.append(dict(q=(tuple(q.shape), q.stride(), q.dtype), k=(tuple(k.shape), k.stride()),
                             mask=None if attn_mask is None else (tuple(attn_mask.shape), attn_mask.dtype),
                             is_causal=is_causal, enable_gqa=enable_gqa, scale=scale))
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                        enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = spy
    try:
        model(ids, is_causal=False)
    finally:
        F.scaled_dot_product_attention = original
    return seen[0]


def top_kernels(fn, count=6):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:count]
    return [(e.key[:90], round(e.device_time_total / 1e3, 2)) for e in rows]


def milliseconds(fn, repeats=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def graphed(model, ids):
    """The forward captured once as a CUDA graph; returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            model(ids, is_causal=False, use_cache=False, logits_to_keep=32)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(ids, is_causal=False, use_cache=False, logits_to_keep=32)
    return graph.replay


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llada-8b")
    parser.add_argument("--lengths", default="104,1176")
    args = parser.parse_args()
    spec = get_spec(args.model)
    model = build_model(spec, torch.device("cuda"), torch.bfloat16, seed=0)
    print(f"{args.model} on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    with torch.inference_mode():
        for length in map(int, args.lengths.split(",")):
            ids = torch.randint(0, 1000, (1, length), device="cuda")
            print(f"\n== L={length}: SDPA arguments from transformers' sdpa: {spy_sdpa_arguments(model, ids)}")
            for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
                with warnings.catch_warnings(record=True) as caught, sdpa_kernel(backend):
                    warnings.simplefilter("always")
                    try:
                        model(ids, is_causal=False, use_cache=False, logits_to_keep=32)
                        outcome = "ran"
                    except RuntimeError as error:
                        outcome = f"error: {str(error).splitlines()[0][:120]}"
                reasons = sorted({str(w.message).splitlines()[0][:160] for w in caught})
                print(f"forced {backend.name}: {outcome}; warnings: {reasons}")
            for attention in ("sdpa", "plain_sdpa"):
                model.set_attn_implementation(attention)
                eager = lambda: model(ids, is_causal=False, use_cache=False, logits_to_keep=32)  # noqa: E731
                replay = graphed(model, ids)
                print(f"{attention}: eager {milliseconds(eager):.2f} ms, graph replay {milliseconds(replay):.2f} ms")
                print(f"  eager kernels: {top_kernels(eager)}")
                print(f"  graph kernels: {top_kernels(replay)}")
            model.set_attn_implementation("sdpa")


if __name__ == "__main__":
    main()
