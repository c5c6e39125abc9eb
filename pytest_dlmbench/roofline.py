"""Analytic FLOPs and bytes of every forward, the device's roofs, and how close a point came.

Counts, per forward and sequence (the batch multiplies all but the weights):
- FLOPs = 2 x matmul weights x tokens + 2 x hidden x vocab x logit positions
          + 4 x layers x heads x head_dim x attended (query, key) pairs;
  pairs: full = tokens x context; causal (queries last) = tokens x (context - tokens) + tokens(tokens+1)/2;
  block_causal = each query sees every key of its block and the blocks before.
- bytes = weights read once per forward (all but the embedding table, whose rows are read)
          + KV read (context - tokens cached positions) + KV written
          + activations: per layer and token, about 10 x hidden + 6 x FFN elements written or read
            (norms, projections, attention output, residual adds, the MLP's gate, up and product)
          + logits out + scoring (the softmax's reads and writes, in its dtype: paradigms/scoring.py)
          + with a concatenating cache (transformers' DynamicCache, the eager runtime): the cached
            KV read and written again by each forward that extends it (not by one that overwrites
            slots the cache holds, as the dual cache's block steps do).
Roofline: a forward takes at least max(FLOPs / peak FLOP/s, bytes / peak bandwidth); summed over
the generation's forwards this is the attainable time, and `roofline_fraction` = measured
tokens/s / attainable tokens/s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_dlmbench.core import PAPER_AI_CAVEAT
from pytest_dlmbench.device import describe, release
from pytest_dlmbench.memory_model import DTYPE_BYTES, expert_parameters, experts_touched, parameter_count
from pytest_dlmbench.models import ModelSpec
from pytest_dlmbench.paradigms.base import FORWARD_KINDS, ForwardShape
from pytest_dlmbench.timing import RegionTimer

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Peaks:
    """A device's dense bf16/fp16 tensor peak and memory bandwidth."""

    tflops: float
    gbps: float
    source: str  # "table", "measured" or "user"

    @property
    def ridge(self) -> float:
        """FLOPs per byte at which the compute roof meets the memory roof."""
        return self.tflops * 1e12 / (self.gbps * 1e9)


# Spec-sheet dense (no sparsity) bf16 tensor FLOP/s and memory bandwidth, by NVML name fragment.
# The first fragment contained in the device name wins, so the more specific come first.
DEVICE_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H100 PCIe", 756.0, 2000.0),
    ("H100 NVL", 835.0, 3900.0),
    ("H100", 989.4, 3350.0),  # SXM5 80GB HBM3
    ("H200", 989.4, 4800.0),
    ("A100-SXM4-40GB", 312.0, 1555.0),
    ("A100-PCIE-40GB", 312.0, 1555.0),
    ("A100 80GB PCIe", 312.0, 1935.0),
    ("A100", 312.0, 2039.0),  # SXM4 80GB
    ("A800", 312.0, 2039.0),
    ("RTX A6000", 154.8, 768.0),
    ("L40S", 362.1, 864.0),
    ("RTX 4090", 165.2, 1008.0),  # fp32 accumulation
)


def table_peaks(device_name: str) -> Peaks | None:
    for fragment, tflops, gbps in DEVICE_PEAKS:
        if fragment in device_name:
            return Peaks(tflops, gbps, "table")
    return None


def measure_peaks(device: torch.device, matmul_size: int = 8192, copy_bytes: int = 2**30, repeats: int = 10) -> Peaks:
    """This GPU's ceilings: device-to-device copy bandwidth (read + write) and a large bf16 matmul."""
    import torch

    def best_seconds(work: Any, *tensors: torch.Tensor) -> float:
        work(*tensors)  # untimed: first-call set-up
        timer = RegionTimer(device)
        for _ in range(repeats):
            with timer.region("work"):
                work(*tensors)
        return min(timer.read()["work"]) / 1e3

    source = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    copy_s = best_seconds(torch.Tensor.copy_, torch.empty_like(source), source)
    del source
    matrix = torch.randn(matmul_size, matmul_size, dtype=torch.bfloat16, device=device)
    matmul_s = best_seconds(torch.matmul, matrix, matrix)
    del matrix
    release(device)
    return Peaks(2 * matmul_size**3 / matmul_s / 1e12, 2 * copy_bytes / copy_s / 1e9, "measured")


def device_peaks(settings: Any) -> Peaks | None:
    """The roofs for this session: measured (--dlm-measure-ceilings, CUDA), else the table entry for
    the GPU's name, each overridden by --dlm-peak-tflops / --dlm-peak-gbps (on any device, the CPU
    included); None when unknown."""
    import warnings

    name = describe(settings.torch_device).name
    if name is None:  # no GPU: only the user's roofs
        peaks = None
    else:
        peaks = measure_peaks(settings.torch_device) if settings.measure_ceilings else table_peaks(name)
    if settings.peak_tflops is not None or settings.peak_gbps is not None:
        if peaks is not None:
            peaks = Peaks(settings.peak_tflops or peaks.tflops, settings.peak_gbps or peaks.gbps, "user")
        elif settings.peak_tflops is None or settings.peak_gbps is None:
            warnings.warn(f"no peak table entry for {name or settings.device!r}: give both --dlm-peak-tflops and "
                          "--dlm-peak-gbps", stacklevel=2)
            return None
        else:
            peaks = Peaks(settings.peak_tflops, settings.peak_gbps, "user")
    if peaks is None and name is not None:
        warnings.warn(f"no peak table entry for {name!r}: roofline fields need --dlm-peak-tflops and "
                      "--dlm-peak-gbps, or --dlm-measure-ceilings", stacklevel=2)
    return peaks


def attended_pairs(shape: ForwardShape, block_size: int | None) -> int:
    tokens, context = shape.tokens, shape.context
    if shape.attention == "causal":
        return tokens * (context - tokens) + tokens * (tokens + 1) // 2
    if shape.attention == "block_causal":
        if block_size is None:
            raise ValueError("a block-causal forward needs its model's block_size")
        return sum(min((i // block_size + 1) * block_size, context) for i in range(tokens))
    return tokens * context


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


def forward_cost(spec: ModelSpec, shape: ForwardShape, batch: int, dtype: str,
                 concatenating_cache: bool = False) -> Cost:
    """FLOPs and bytes of one forward over `batch` sequences."""
    size = DTYPE_BYTES[dtype]
    h, vocab = spec.hidden_size, spec.vocab_size
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    # matmul weights a token runs through: a mixture of experts' router and its chosen experts
    linear = spec.num_layers * (2 * h * q + 2 * h * kv + 3 * h * spec.active_intermediate_size
                                + h * (spec.num_experts or 0))
    # every weight but the embedding table (only its rows are read) and the experts no token chose
    experts = expert_parameters(spec)
    # (tied, the table is the LM head, read whole)
    read = parameter_count(spec) - (0 if spec.tied_embeddings else vocab * h) - spec.num_layers * experts * (
        1 - experts_touched(spec, batch * shape.tokens) / (spec.num_experts or 1))
    layer_kv = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * size  # bytes per cached position
    flops = batch * (2 * linear * shape.tokens + 2 * h * vocab * shape.logits
                     + 4 * spec.num_layers * spec.num_heads * spec.head_dim * attended_pairs(shape, spec.block_size))
    cached = shape.context - shape.tokens
    moved = read * size + batch * (
        cached * layer_kv * (3 if concatenating_cache and shape.kv_written and not shape.in_place else 1)
        + shape.kv_written * layer_kv
        + shape.tokens * spec.num_layers * (10 * h + 6 * spec.active_intermediate_size) * size
        + shape.logits * vocab * size + shape.softmax_rows * vocab * shape.softmax_bytes
    )
    return Cost(float(flops), float(moved))


def attainable_seconds(costs: Iterable[Cost], peaks: Peaks) -> float:
    """Each forward at the lower of its two roofs, summed."""
    return sum(max(cost.flops / (peaks.tflops * 1e12), cost.bytes / (peaks.gbps * 1e9)) for cost in costs)


def paper_formula(equation: str) -> str:
    """The `ai_paper_formula` label of a paradigm's Appendix A equation."""
    return f"seed paper Appendix A {equation}: {PAPER_AI_CAVEAT}"


# Every key `roofline_fields` saves, so that every point has them all (null where unknown).
ROOFLINE_KEYS = (
    "flops_per_forward", "bytes_per_forward", "flops_per_token", "flops_total", "bytes_total", "arithmetic_intensity",
    *(f"{measure}_{kind}" for kind in FORWARD_KINDS
      for measure in ("flops_per_forward", "bytes_per_forward", "arithmetic_intensity")),
    "achieved_tflops", "achieved_gbps", "peak_tflops", "peak_gbps", "peaks_source", "ridge_flops_per_byte", "bound",
    "attainable_tokens_per_s", "roofline_fraction", "ai_paper_flop_per_element", "ai_paper_formula",
)


def empty_roofline() -> dict[str, Any]:
    return dict.fromkeys(ROOFLINE_KEYS)


def roofline_fields(spec: ModelSpec, shapes: tuple[ForwardShape, ...], batch: int, gen_len: int, dtype: str,
                    latency_s: float | None, peaks: Peaks | None, concatenating_cache: bool = False) -> dict[str, Any]:
    """The extra_info keys of one point: analytic counts, and measured rates against the roofs."""
    costs = [(shape.kind, forward_cost(spec, shape, batch, dtype, concatenating_cache)) for shape in shapes]
    total = sum((cost for _, cost in costs), Cost(0.0, 0.0))
    fields = empty_roofline() | {
        "flops_per_forward": total.flops / len(costs),
        "bytes_per_forward": total.bytes / len(costs),
        "flops_per_token": total.flops / (batch * gen_len),
        "flops_total": total.flops,
        "bytes_total": total.bytes,
        "arithmetic_intensity": total.flops / total.bytes,
    }
    for kind in dict.fromkeys(kind for kind, _ in costs):
        of_kind = [cost for k, cost in costs if k == kind]
        flops, moved = sum(c.flops for c in of_kind), sum(c.bytes for c in of_kind)
        fields[f"flops_per_forward_{kind}"] = flops / len(of_kind)
        fields[f"bytes_per_forward_{kind}"] = moved / len(of_kind)
        fields[f"arithmetic_intensity_{kind}"] = flops / moved
    if not latency_s:
        return fields
    fields |= {"achieved_tflops": total.flops / latency_s / 1e12, "achieved_gbps": total.bytes / latency_s / 1e9}
    if peaks is None:
        return fields
    attainable = attainable_seconds((cost for _, cost in costs), peaks)
    fields |= {
        "peak_tflops": peaks.tflops,
        "peak_gbps": peaks.gbps,
        "peaks_source": peaks.source,
        "ridge_flops_per_byte": peaks.ridge,
        "bound": "compute" if fields["arithmetic_intensity"] >= peaks.ridge else "memory",
        "attainable_tokens_per_s": batch * gen_len / attainable,
        "roofline_fraction": attainable / latency_s,
    }
    return fields
