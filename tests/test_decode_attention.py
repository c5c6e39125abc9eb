"""The split-KV decode kernels (Triton) against SDPA over each row's valid slots, in fp32: on the CPU
in Triton's interpreter, whose dot is exact; with CUDA on the GPU, whose fp32 dots round their
inputs to TF32 (unwritten slots hold 1e3, so a slot read past a row's length still fails by far).
tests/test_gpu_runtime.py checks them in bf16 on CUDA."""

from __future__ import annotations

import pytest
import torch

from pytest_dlmbench.runtimes.decode_attention import decode_attention, split_count

pytest.importorskip("triton", reason="the kernels are Triton's; `pip install -e .[test]` installs it")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {"atol": 1e-2, "rtol": 1e-2} if DEVICE.type == "cuda" else {"atol": 1e-5, "rtol": 1e-5}


def on_device(*tensors):
    return tuple(tensor.to(DEVICE) for tensor in tensors)


def exact(query, keys, values, lengths, scale):
    """Each row's attention over its valid slots alone: (B, H, D)."""
    return torch.cat([torch.nn.functional.scaled_dot_product_attention(
        query[row, None, :, None], keys[row, None, :length].transpose(1, 2), values[row, None, :length].transpose(1, 2),
        scale=scale, enable_gqa=True)[:, :, 0] for row, length in enumerate(lengths.tolist())])


@pytest.mark.parametrize(("heads", "kv_heads", "lengths", "splits"), [
    (8, 2, [70], 4),  # shares of 64 slots: one full, one partial, two empty
    (8, 8, [1, 200], 2),  # a row with one valid slot beside a full one; one query head a KV head
    (12, 4, [130, 5, 64], 8),  # three query heads a group (padded rows); rows of different lengths
])
def test_decode_attention_reads_each_rows_valid_slots_only(heads, kv_heads, lengths, splits):
    generator = torch.Generator().manual_seed(0)
    batch, slots, dim = len(lengths), 200, 32
    query = torch.randn(batch, heads, dim, generator=generator)
    keys, values = (torch.randn(batch, slots, kv_heads, dim, generator=generator) for _ in range(2))
    lengths = torch.tensor(lengths, dtype=torch.int32)
    for row, length in enumerate(lengths.tolist()):
        keys[row, length:], values[row, length:] = 1e3, 1e3  # unwritten slots: would dominate if read
    query, keys, values, lengths = on_device(query, keys, values, lengths)
    got = decode_attention(query, keys, values, lengths, dim**-0.5, splits)
    torch.testing.assert_close(got, exact(query, keys, values, lengths, dim**-0.5), **TOLERANCE)


def test_decode_attention_takes_strided_queries():
    """The runtime passes the query as a view into the q/k/v projection's output."""
    generator = torch.Generator().manual_seed(1)
    projected = torch.randn(2, 8 * 16 + 2 * 2 * 16, generator=generator)  # (B, (H + 2 KVH) D)
    query = projected[:, : 8 * 16].view(2, 8, 16)
    keys, values = (torch.randn(2, 40, 2, 16, generator=generator) for _ in range(2))
    lengths = torch.tensor([40, 17], dtype=torch.int32)
    projected, keys, values, lengths = on_device(projected, keys, values, lengths)
    query = projected[:, : 8 * 16].view(2, 8, 16)
    torch.testing.assert_close(decode_attention(query, keys, values, lengths, 0.25, 4),
                               exact(query, keys, values, lengths, 0.25), **TOLERANCE)


@pytest.mark.parametrize(("problem", "message"), [
    ({"dim": 24}, "power-of-two head dim"),
    ({"splits": 3}, "split count"),
    ({"transposed": True}, "last dimension contiguous"),
])
def test_decode_attention_names_what_it_cannot_run(problem, message):
    dim = problem.get("dim", 16)
    query = torch.randn(1, 4, dim)
    keys = torch.randn(1, 8, 2, dim)
    if problem.get("transposed"):
        keys = torch.randn(1, 8, dim, 2).transpose(-1, -2)
    with pytest.raises(ValueError, match=message):
        decode_attention(query, keys, keys.clone(), torch.tensor([8], dtype=torch.int32), 0.25,
                         problem.get("splits", 2))


@pytest.mark.parametrize(("rows_by_heads", "multiprocessors", "splits"), [
    (8, 132, 16),  # batch 1 of 8 KV heads: 264 programs wanted, 33 splits, at most 16
    (32, 132, 8),  # batch 4: 8.25 splits, a power of two below
    (128, 132, 2),
    (512, 132, 1),  # at least one
])
def test_split_count_fills_the_gpu_in_powers_of_two(rows_by_heads, multiprocessors, splits):
    assert split_count(rows_by_heads, multiprocessors) == splits
