"""Decode attention over a static cache at batch 1..16: flash's split-KV kernel (varlen,
seqused_k), SDPA over the folded, masked window and decode_attention.py's Triton kernels, each
timed as 32 layers in one CUDA graph; and the decode GEMVs as cuBLAS and as Inductor reductions.
profile_forward.py times the whole decode step. (h200/decode-attention-2.txt also times that step
with Inductor's combo kernels off and with other sets of GEMVs as reductions: switches this
script had then, removed once the choice was made.)
Usage: python results/graph-runtime/decode_attention_parts.py
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from decode_parts import DEVICE, DIM, DTYPE, HEADS, KV_HEADS, LAYERS, gemv_choices, timed  # noqa: E402

from pytest_dlmbench.runtimes import decode_attention as triton_attention  # noqa: E402


def flash(query, keys, values, lengths, scale, capacity):
    batch = query.shape[0]
    starts = torch.arange(batch + 1, dtype=torch.int32, device=DEVICE)
    return torch.ops.aten._flash_attention_forward(query, keys.flatten(0, 1), values.flatten(0, 1), starts,
                                                   starts * capacity, 1, capacity, 0.0, False, False, scale=scale,
                                                   seqused_k=lengths)[0]


def attention_parts() -> None:
    scale = DIM**-0.5
    multiprocessors = torch.cuda.get_device_properties(0).multi_processor_count
    for batch, (capacity, valid) in itertools.product((1, 2, 4, 8, 16), ((1024, 984), (2048, 1944))):
        keys = [torch.randn(batch, capacity, KV_HEADS, DIM, dtype=DTYPE, device=DEVICE) for _ in range(LAYERS)]
        values = [torch.randn_like(k) for k in keys]
        query = torch.randn(batch, HEADS, DIM, dtype=DTYPE, device=DEVICE)
        lengths = torch.full((batch,), valid, dtype=torch.int32, device=DEVICE)
        moved = 2 * batch * valid * KV_HEADS * DIM * 2
        tag = f"B={batch} slots {capacity} valid {valid}"
        timed(f"{tag}: flash split-KV", lambda layer: flash(query, keys[layer], values[layer], lengths, scale,
                                                             capacity), moved)
        groups = HEADS // KV_HEADS
        window = [k.transpose(1, 2) for k in keys], [v.transpose(1, 2) for v in values]  # (B, KVH, slots, D)
        additive = torch.zeros(capacity, dtype=DTYPE, device=DEVICE).masked_fill_(
            torch.arange(capacity, device=DEVICE) >= valid, float("-inf")).expand(1, 1, groups, capacity).contiguous()
        timed(f"{tag}: folded SDPA, additive mask (the fp32 decode path)", lambda layer: F.scaled_dot_product_attention(
            query.view(batch, KV_HEADS, groups, DIM), window[0][layer], window[1][layer], attn_mask=additive,
            scale=scale), moved)
        exact = F.scaled_dot_product_attention(query[:, :, None], keys[0][:, :valid].transpose(1, 2),
                                               values[0][:, :valid].transpose(1, 2), scale=scale, enable_gqa=True)[:, :, 0]
        print(f"  flash vs exact {(flash(query, keys[0], values[0], lengths, scale, capacity) - exact).abs().max().item():.3g}")
        default = triton_attention.split_count(batch * KV_HEADS, multiprocessors)
        for splits, block, warps in itertools.product((1, 2, 4, 8, 16, 32), (64,), (2, 4)):
            if batch * KV_HEADS * splits > 8 * multiprocessors or batch * KV_HEADS * splits < multiprocessors // 4:
                continue
            triton_attention.BLOCK_N, triton_attention.WARPS = block, warps
            mark = " (default)" if (splits, block, warps) == (default, 64, 2) else ""
            timed(f"{tag}: triton splits {splits} block {block} warps {warps}{mark}",
                  lambda layer: triton_attention.decode_attention(query, keys[layer], values[layer], lengths, scale,
                                                                  splits), moved)
        triton_attention.BLOCK_N, triton_attention.WARPS = 64, 2
        got = triton_attention.decode_attention(query, keys[0], values[0], lengths, scale, default)
        print(f"  triton vs exact {(got - exact).abs().max().item():.3g}", flush=True)


if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    attention_parts()
    gemv_choices()

