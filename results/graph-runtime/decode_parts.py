"""The parts of llama-3.1-8b's batch-1 decode step, each timed as 32 layers in one CUDA graph.

Every layer reads its own weights and KV cache (as the model does), so nothing is served from L2.
Compares the graphs runtime's current choices (cuDNN SDPA over a folded, masked window; F.linear;
two index_copy_ cache writes) with alternatives: FlexAttention's split-KV decoding kernel,
split-K output projection, torch.mv. Usage: python results/graph-runtime/decode_parts.py
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

LAYERS, HEADS, KV_HEADS, DIM, HIDDEN, INTER, VOCAB = 32, 32, 8, 128, 4096, 14336, 128256
WINDOW, VALID = 1024, 984
DTYPE, DEVICE = torch.bfloat16, "cuda"


def timed(name: str, step: Callable[[int], object], moved_bytes: float = 0.0, count: int = LAYERS) -> float:
    """Microseconds per call of step(layer), captured `count` times in one graph."""
    for layer in range(count):  # warm-up and compile, outside the graph
        step(layer)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for layer in range(count):
            step(layer)
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(20):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) * 1000 / count)
    micros = sorted(times)[len(times) // 2]
    rate = f"  {moved_bytes / micros / 1e6:5.2f} TB/s" if moved_bytes else ""
    print(f"{name:58s} {micros:7.2f} us{rate}", flush=True)
    return micros


def attention_parts() -> None:
    keys = [torch.randn(1, KV_HEADS, WINDOW, DIM, dtype=DTYPE, device=DEVICE) for _ in range(LAYERS)]
    values = [torch.randn_like(k) for k in keys]
    query = torch.randn(1, HEADS, 1, DIM, dtype=DTYPE, device=DEVICE)
    out = torch.empty(1, HEADS, 1, DIM, dtype=DTYPE, device=DEVICE)
    kv_bytes = 2 * keys[0].numel() * 2
    valid = torch.arange(WINDOW, device=DEVICE) < VALID
    additive = torch.zeros(WINDOW, dtype=DTYPE, device=DEVICE).masked_fill_(~valid, float("-inf"))
    folded_mask = additive.expand(1, 1, HEADS // KV_HEADS, WINDOW).contiguous()
    length = torch.tensor([VALID], device=DEVICE)
    scale = DIM**-0.5

    def folded_sdpa(layer: int) -> None:
        folded = query.reshape(1, KV_HEADS, HEADS // KV_HEADS, DIM)
        out.copy_(F.scaled_dot_product_attention(folded, keys[layer], values[layer], attn_mask=folded_mask,
                                                 scale=scale).reshape(1, HEADS, 1, DIM))

    timed("attention: folded SDPA, additive mask (current)", folded_sdpa, kv_bytes)

    def bias_mod(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor,
                 kv: torch.Tensor) -> torch.Tensor:
        return score + additive[kv]

    def length_mod(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor,
                   kv: torch.Tensor) -> torch.Tensor:
        return torch.where(kv < length[0], score, float("-inf"))

    compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    for name, mod in (("bias", bias_mod), ("length", length_mod)):
        def flex(layer: int, mod: Callable[..., torch.Tensor] = mod) -> None:
            out.copy_(compiled(query, keys[layer], values[layer], score_mod=mod, scale=scale, enable_gqa=True))

        timed(f"attention: flex decoding, {name} score_mod", flex, kv_bytes)
    reference = F.scaled_dot_product_attention(query, keys[0][:, :, :VALID], values[0][:, :, :VALID],
                                               scale=scale, enable_gqa=True)
    flex_out = compiled(query, keys[0], values[0], score_mod=length_mod, scale=scale, enable_gqa=True)
    print(f"flex vs exact-window SDPA: max abs difference {(flex_out - reference).abs().max().item():.3g}")


GEMVS = (("qkv", (HEADS + 2 * KV_HEADS) * DIM, HIDDEN), ("o_proj", HIDDEN, HIDDEN), ("gate_up", 2 * INTER, HIDDEN),
         ("down", HIDDEN, INTER))  # name, rows, columns of a layer's GEMV weights


def gemv_operands(rows: int, cols: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One weight (rows, cols) a layer and a one-token input (1, 1, cols)."""
    weights = [torch.randn(rows, cols, dtype=DTYPE, device=DEVICE) / cols**0.5 for _ in range(LAYERS)]
    return weights, torch.randn(1, 1, cols, dtype=DTYPE, device=DEVICE)


def gemv_parts() -> None:
    for name, rows, cols in GEMVS:
        weights, inputs = gemv_operands(rows, cols)
        moved = rows * cols * 2
        timed(f"{name} {rows}x{cols}: F.linear", lambda layer: F.linear(inputs, weights[layer]), moved)
        timed(f"{name} {rows}x{cols}: torch.mv", lambda layer: torch.mv(weights[layer], inputs[0, 0]), moved)
        for splits in (2, 4):
            def split_k(layer: int, splits: int = splits) -> torch.Tensor:
                parts = weights[layer].view(rows, splits, cols // splits).permute(1, 2, 0)  # (s, cols/s, rows)
                return torch.bmm(inputs.view(splits, 1, cols // splits), parts).sum(0)

            timed(f"{name} {rows}x{cols}: split-K {splits} bmm + sum", split_k, moved)
        exact = F.linear(inputs, weights[0]).float()
        print(f"  mv vs linear max abs difference {(torch.mv(weights[0], inputs[0, 0]).float() - exact).abs().max():.3g}")


def varlen_parts() -> None:
    """Flash's varlen kernel over the whole static cache, told each row's valid length (seqused_k):
    no mask, so no bucketed window, and split-KV for a single query."""
    print(torch.ops.aten._flash_attention_forward.default._schema)

    def varlen_attn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_q: torch.Tensor,
                    cu_k: torch.Tensor, max_q: int, max_k: int, scale: float, enable_gqa: bool,
                    seqused_k: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._flash_attention_forward(query, key, value, cu_q, cu_k, max_q, max_k, 0.0, False,
                                                       False, scale=scale, seqused_k=seqused_k)[0]
    scale = DIM**-0.5
    for batch in (1, 2, 4, 16):
        keys = [torch.randn(batch * WINDOW, KV_HEADS, DIM, dtype=DTYPE, device=DEVICE) for _ in range(LAYERS)]
        values = [torch.randn_like(k) for k in keys]
        query = torch.randn(batch, HEADS, DIM, dtype=DTYPE, device=DEVICE)
        out = torch.empty_like(query)
        cu_q = torch.arange(batch + 1, dtype=torch.int32, device=DEVICE)
        cu_k = cu_q * WINDOW
        used = torch.full((batch,), VALID, dtype=torch.int32, device=DEVICE)
        kv_bytes = 2 * batch * VALID * KV_HEADS * DIM * 2
        timed(f"attention B={batch}: varlen flash, seqused_k", lambda layer: out.copy_(varlen_attn(
            query, keys[layer], values[layer], cu_q, cu_k, 1, WINDOW, scale=scale, enable_gqa=True,
            seqused_k=used)), kv_bytes)
        groups = HEADS // KV_HEADS
        cu_packed = cu_q * groups

        def packed(layer: int) -> None:  # each KV head's query heads as `groups` query rows of it
            rows = query.view(batch, KV_HEADS, groups, DIM).transpose(1, 2).reshape(batch * groups, KV_HEADS, DIM)
            got = varlen_attn(rows, keys[layer], values[layer], cu_packed, cu_k, groups, WINDOW, scale=scale,
                              enable_gqa=True, seqused_k=used)  # (B groups, KVH, D)
            out.view(batch, KV_HEADS, groups, DIM).copy_(got.view(batch, groups, KV_HEADS, DIM).transpose(1, 2))

        timed(f"attention B={batch}: varlen flash, query heads packed as rows", packed, kv_bytes)
        cache_k = [k.view(batch, WINDOW, KV_HEADS, DIM).transpose(1, 2) for k in keys]
        cache_v = [v.view(batch, WINDOW, KV_HEADS, DIM).transpose(1, 2) for v in values]
        additive = torch.zeros(WINDOW, dtype=DTYPE, device=DEVICE).masked_fill_(
            torch.arange(WINDOW, device=DEVICE) >= VALID, float("-inf")).expand(1, 1, groups, WINDOW).contiguous()
        timed(f"attention B={batch}: folded SDPA, additive mask (current)", lambda layer: out.copy_(
            F.scaled_dot_product_attention(query.view(batch, KV_HEADS, groups, DIM), cache_k[layer], cache_v[layer],
                                           attn_mask=additive, scale=scale).view(batch, HEADS, DIM)), kv_bytes)
        packed(0)
        print(f"  packed vs plain varlen: max abs difference {(out - varlen_attn(query, keys[0], values[0], cu_q, cu_k, 1, WINDOW, scale=scale, enable_gqa=True, seqused_k=used)).abs().max().item():.3g}")
        exact_k = keys[0].view(batch, WINDOW, KV_HEADS, DIM)[:, :VALID].transpose(1, 2)
        exact_v = values[0].view(batch, WINDOW, KV_HEADS, DIM)[:, :VALID].transpose(1, 2)
        timed(f"attention B={batch}: SDPA over the exact window (reference)",
              lambda layer: F.scaled_dot_product_attention(query[:, :, None], exact_k, exact_v, scale=scale,
                                                           enable_gqa=True), kv_bytes)
        reference = F.scaled_dot_product_attention(query[:, :, None], exact_k, exact_v, scale=scale,
                                                   enable_gqa=True)[:, :, 0]
        got = varlen_attn(query, keys[0], values[0], cu_q, cu_k, 1, WINDOW, scale=scale, enable_gqa=True,
                          seqused_k=used)
        print(f"  varlen vs exact SDPA: max abs difference {(got - reference).abs().max().item():.3g}")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            varlen_attn(query, keys[0], values[0], cu_q, cu_k, 1, WINDOW, scale=scale, enable_gqa=True,
                        seqused_k=used)
            torch.cuda.synchronize()
        print("  kernels:", sorted({event.name[:90] for event in profile.events() if event.device_type.name == "CUDA"}))


def gemv_choices() -> None:
    """cuBLAS against cuBLASLt and Inductor's reduction kernel for the decode GEMVs."""
    import torch._inductor.config as inductor_config

    def reduction(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # (1, 1, K) x (N, K) -> (1, 1, N)
        return torch.sum(weight.float() * x.float(), dim=-1).to(weight.dtype)

    compiled = torch.compile(reduction, dynamic=False, fullgraph=True)
    for name, rows, cols in GEMVS:
        weights, inputs = gemv_operands(rows, cols)
        moved = rows * cols * 2
        timed(f"{name} {rows}x{cols}: F.linear", lambda layer: F.linear(inputs, weights[layer]), moved)
        torch.backends.cuda.preferred_blas_library("cublaslt")
        timed(f"{name} {rows}x{cols}: F.linear, cuBLASLt", lambda layer: F.linear(inputs, weights[layer]), moved)
        torch.backends.cuda.preferred_blas_library("cublas")
        timed(f"{name} {rows}x{cols}: Inductor reduction", lambda layer: compiled(inputs[0, 0], weights[layer]), moved)
        print(f"  reduction vs linear max abs difference "
              f"{(compiled(inputs[0, 0], weights[0]) - F.linear(inputs, weights[0])[0, 0]).abs().max().item():.3g}")
    inductor_config.coordinate_descent_tuning = True
    tuned = torch.compile(reduction, dynamic=False, fullgraph=True)
    for name, rows, cols in GEMVS:
        weights, inputs = gemv_operands(rows, cols)
        timed(f"{name} {rows}x{cols}: Inductor reduction, tuned", lambda layer: tuned(inputs[0, 0], weights[layer]),
              rows * cols * 2)


def cache_parts() -> None:
    keys = [torch.zeros(1, KV_HEADS, WINDOW, DIM, dtype=DTYPE, device=DEVICE) for _ in range(LAYERS)]
    values = [torch.zeros_like(k) for k in keys]
    joint = [torch.zeros(2, 1, KV_HEADS, WINDOW, DIM, dtype=DTYPE, device=DEVICE) for _ in range(LAYERS)]
    k = torch.randn(1, KV_HEADS, 1, DIM, dtype=DTYPE, device=DEVICE)
    kv = torch.randn(2, 1, KV_HEADS, 1, DIM, dtype=DTYPE, device=DEVICE)
    slots = torch.tensor([VALID - 1], device=DEVICE)

    def two_copies(layer: int) -> None:
        keys[layer].index_copy_(2, slots, k)
        values[layer].index_copy_(2, slots, k)

    timed("cache write: two index_copy_ (current)", two_copies)
    timed("cache write: one index_copy_ of stacked k, v", lambda layer: joint[layer].index_copy_(3, slots, kv))


def main() -> None:
    torch.manual_seed(0)
    print(torch.__version__, torch.cuda.get_device_name())
    import sys

    if "gemv" in sys.argv:
        gemv_choices()
        return
    if "varlen" in sys.argv:
        varlen_parts()
        return
    attention_parts()
    cache_parts()
    gemv_parts()
    lm_head = torch.randn(VOCAB, HIDDEN, dtype=DTYPE, device=DEVICE)
    x = torch.randn(1, 1, HIDDEN, dtype=DTYPE, device=DEVICE)
    timed("lm_head: F.linear", lambda _: F.linear(x, lm_head), lm_head.numel() * 2, count=1)


if __name__ == "__main__":
    main()
