"""Split-KV decode attention over a static cache, as two Triton kernels (flash-decoding).

A decode step's query is one position a row; each row attends to the first `lengths[b]` slots of
its cache. `split_kv_attention_kernel` gives every (row, KV head) `splits` programs, each over one
share of the valid slots: it loads the KV head's grouped query heads together (so K and V are
read once a group, not once a query head) and leaves a partial softmax (max, sum, weighted
values) per query head. `split_kv_combine_kernel` weighs the shares into the output. The shares
are cut from the row's valid length at run time, so the programs stay balanced as the context
grows inside one captured graph.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BLOCK_N = 64  # slots a program reads per iteration
MIN_GROUP_ROWS = 16  # tl.dot's smallest row count: query heads of a group are padded to it
PROGRAMS_PER_MULTIPROCESSOR = 2  # splits are chosen so the partial programs fill the GPU about twice
MAX_SPLITS = 16
WARPS = 2  # per partial program: as fast as 4 or faster at 32 of 42 shapes (h200/decode-attention-2.txt)


def split_count(rows_by_heads: int, multiprocessors: int) -> int:
    """Splits a (row, KV head) gets: a power of two, so the combine loads them as one block. On the
    H200 (132 multiprocessors) this picks 16, 16, 8, 4 and 2 at batch 1, 2, 4, 8 and 16 of llama's
    8 KV heads, the fastest of 1..32 at each but batch 1 at 1024 slots (8: 6.26 against 6.32 us)
    (results/graph-runtime/h200/decode-attention-2.txt)."""
    wanted = max(1, PROGRAMS_PER_MULTIPROCESSOR * multiprocessors // rows_by_heads)
    return min(MAX_SPLITS, 1 << (wanted.bit_length() - 1))


@functools.cache
def kernels() -> tuple[Any, Any]:
    """The two kernels, compiled by Triton on first launch (imported here: Triton comes with CUDA torch)."""
    import triton
    import triton.language as tl

    @triton.jit
    def split_kv_attention_kernel(
            query, keys, values, lengths, partial_values, partial_stats, scale_log2,
            query_row_stride, query_head_stride, cache_row_stride, cache_slot_stride, cache_head_stride,
            KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, SPLITS: tl.constexpr, DIM: tl.constexpr,
            GROUP_ROWS: tl.constexpr, BLOCK: tl.constexpr) -> None:
        row_head = tl.program_id(0)  # row * KV_HEADS + KV head
        split = tl.program_id(1)
        row, kv_head = row_head // KV_HEADS, row_head % KV_HEADS
        length = tl.load(lengths + row)
        share = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK) * BLOCK
        start = split * share
        end = tl.minimum(start + share, length)
        group = tl.arange(0, GROUP_ROWS)
        dim = tl.arange(0, DIM)
        q = tl.load(query + row * query_row_stride + (kv_head * GROUPS + group)[:, None] * query_head_stride
                    + dim[None, :], mask=(group < GROUPS)[:, None], other=0.0)  # (GROUP_ROWS, DIM)
        cache = row * cache_row_stride + kv_head * cache_head_stride + dim[None, :]
        running_max = tl.full([GROUP_ROWS], float("-inf"), tl.float32)
        running_sum = tl.zeros([GROUP_ROWS], tl.float32)
        weighted = tl.zeros([GROUP_ROWS, DIM], tl.float32)
        for first in range(start, end, BLOCK):
            slot = first + tl.arange(0, BLOCK)
            valid = slot < end
            k = tl.load(keys + cache + slot[:, None] * cache_slot_stride, mask=valid[:, None],
                        other=0.0)  # (BLOCK, DIM)
            scores = tl.dot(q, tl.trans(k)) * scale_log2  # (GROUP_ROWS, BLOCK), log2 units
            scores = tl.where(valid[None, :], scores, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, 1))
            rescale = tl.exp2(running_max - new_max)
            weights = tl.exp2(scores - new_max[:, None])
            running_sum = running_sum * rescale + tl.sum(weights, 1)
            v = tl.load(values + cache + slot[:, None] * cache_slot_stride, mask=valid[:, None], other=0.0)
            weighted = weighted * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
            running_max = new_max
        out = (row_head * SPLITS + split) * GROUPS + group  # (GROUP_ROWS,) rows of the partials
        kept = group < GROUPS
        tl.store(partial_values + out[:, None] * DIM + dim[None, :], weighted, mask=kept[:, None])
        tl.store(partial_stats + out * 2, running_max, mask=kept)
        tl.store(partial_stats + out * 2 + 1, running_sum, mask=kept)

    @triton.jit
    def split_kv_combine_kernel(
            partial_values, partial_stats, output, output_row_stride, output_head_stride,
            KV_HEADS: tl.constexpr, GROUPS: tl.constexpr, SPLITS: tl.constexpr, DIM: tl.constexpr) -> None:
        row_query_head = tl.program_id(0)  # row * heads + query head
        row, head = row_query_head // (KV_HEADS * GROUPS), row_query_head % (KV_HEADS * GROUPS)
        split = tl.arange(0, SPLITS)
        dim = tl.arange(0, DIM)
        share = ((row * KV_HEADS + head // GROUPS) * SPLITS + split) * GROUPS + head % GROUPS  # (SPLITS,)
        share_max = tl.load(partial_stats + share * 2)
        share_sum = tl.load(partial_stats + share * 2 + 1)
        top = tl.max(share_max, 0)
        weight = tl.exp2(share_max - top)  # (SPLITS,): 0 for an empty share, whose max is -inf
        total = tl.sum(weight * share_sum, 0)
        shares = tl.load(partial_values + share[:, None] * DIM + dim[None, :])  # (SPLITS, DIM)
        out = tl.sum(shares * weight[:, None], 0) / total
        tl.store(output + row * output_row_stride + head * output_head_stride + dim,
                 out.to(output.dtype.element_ty))

    return split_kv_attention_kernel, split_kv_combine_kernel


def decode_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor,
                     scale: float, splits: int) -> torch.Tensor:
    """query (B, H, D), keys/values (B, slots, KVH, D), lengths (B,) int32 -> (B, H, D): each row's
    query over its first lengths[b] slots, whatever the slots past them hold."""
    import torch

    batch, heads, dim = query.shape
    kv_heads = keys.shape[2]
    groups = heads // kv_heads
    if query.stride(-1) != 1 or keys.stride(-1) != 1 or keys.stride() != values.stride():
        raise ValueError(f"decode attention needs the last dimension contiguous and keys laid out as values; got "
                         f"query strides {query.stride()}, keys {keys.stride()}, values {values.stride()}")
    if dim & (dim - 1) or splits & (splits - 1):
        raise ValueError(f"decode attention needs a power-of-two head dim and split count; got {dim} and {splits}")
    split_kv_attention_kernel, split_kv_combine_kernel = kernels()
    partial_values = torch.empty(batch * kv_heads * splits * groups, dim, dtype=torch.float32, device=query.device)
    partial_stats = torch.empty(batch * kv_heads * splits * groups, 2, dtype=torch.float32, device=query.device)
    group_rows = max(MIN_GROUP_ROWS, 1 << (groups - 1).bit_length())
    split_kv_attention_kernel[(batch * kv_heads, splits)](
        query, keys, values, lengths, partial_values, partial_stats, scale * 1.4426950408889634,  # log2(e)
        query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
        KV_HEADS=kv_heads, GROUPS=groups, SPLITS=splits, DIM=dim, GROUP_ROWS=group_rows, BLOCK=BLOCK_N,
        num_warps=WARPS)
    output = torch.empty(batch, heads, dim, dtype=query.dtype, device=query.device)
    split_kv_combine_kernel[(batch * heads,)](
        partial_values, partial_stats, output, output.stride(0), output.stride(1),
        KV_HEADS=kv_heads, GROUPS=groups, SPLITS=splits, DIM=dim)
    return output
