"""The result of one benchmark point, with units in every name, as saved in `extra_info`.

Definitions (shared/REFERENCE.md): tokens_per_s = batch * gen_len / median wall time of the
whole generation (prefill included, device synchronized); NFE counts every model forward,
prefill included; tokens_per_forward = gen_len / NFE (per sequence).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any

from pytest_dlmbench.grid import BenchPoint
from pytest_dlmbench.memory import MemoryReport


def step_times_ms(forward_ms: dict[str, list[float]]) -> list[float]:
    """The forwards that make up the decoding steps: every kind but the prefill."""
    return [ms for kind, values in forward_ms.items() if kind != "prefill" for ms in values]


@dataclass(frozen=True)
class PointMetrics:
    """Flat and JSON-safe; the first block of fields are the fixed extra_info keys."""

    paradigm: str
    strategy: str
    model: str
    weights: str  # "random", "checkpoint" or "user"
    dtype: str
    device: str
    prompt_len: int
    gen_len: int
    batch_size: int
    block_size: int | None
    steps: int | None
    tokens_generated: int  # batch * gen_len
    tokens_per_s: float | None
    latency_s: float | None  # median over timed rounds
    nfe: int | None
    tokens_per_forward: float | None
    ms_per_forward: float | None  # mean device time of the non-prefill forwards
    prefill_ms: float | None
    peak_mem_allocated_bytes: int | None
    peak_mem_reserved_bytes: int | None
    nvml_peak_used_bytes: int | None
    status: str  # "ok", "oom", "error", or "untimed" (a boundary whose generation exceeds the time budget)
    # Detail beyond the fixed keys.
    acceptance: str = "fixed"  # "fixed", "model" (real confidences) or "simulated" (a TPF target)
    threshold: float | None = None
    tpf_target: float | None = None
    token_agreement: float | None = None  # share of tokens equal to the baseline strategy's output
    predicted_peak_bytes: int | None = None  # the analytic memory model (memory_model.py)
    measured_to_predicted: float | None = None  # peak_mem_allocated_bytes / predicted_peak_bytes
    prompt_source: str = "synthetic"
    rounds: int = 0
    warmup_rounds: int = 0
    round_latencies_s: tuple[float, ...] = ()
    nvml_baseline_used_bytes: int | None = None
    peak_rss_bytes: int | None = None
    message: str | None = None
    sm_clock_mhz_start: int | None = None  # NVML readings when the tracked run began and ended
    sm_clock_mhz_end: int | None = None
    clock_event_reasons_start: tuple[str, ...] | None = None
    clock_event_reasons_end: tuple[str, ...] | None = None
    other_processes_bytes: int | None = None
    roofline: dict[str, Any] = dataclasses.field(default_factory=dict)  # roofline.py's keys and ai_paper, saved flat
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # further keys, saved flat (e.g. a boundary search)

    @classmethod
    def from_run(
        cls,
        point: BenchPoint,
        *,
        describe: dict[str, Any],
        latencies_s: list[float],
        nfe: int | None,
        forward_ms: dict[str, list[float]],
        memory: MemoryReport,
        warmup_rounds: int,
        token_agreement: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> PointMetrics:
        """Derive every rate from raw readings of one point; `describe` carries the labels."""
        latency = statistics.median(latencies_s) if latencies_s else None
        predicted = describe.get("predicted_peak_bytes")
        measured = memory.peak_allocated_bytes
        tokens = point.batch_size * point.gen_len
        step_ms = step_times_ms(forward_ms)
        prefill = forward_ms.get("prefill", [])
        return cls(
            paradigm=point.paradigm,
            strategy=point.strategy,
            model=point.model,
            prompt_len=point.prompt_len,
            gen_len=point.gen_len,
            batch_size=point.batch_size,
            tokens_generated=tokens,
            tokens_per_s=tokens / latency if latency else None,
            latency_s=latency,
            nfe=nfe,
            tokens_per_forward=point.gen_len / nfe if nfe else None,
            ms_per_forward=statistics.fmean(step_ms) if step_ms else None,
            prefill_ms=statistics.fmean(prefill) if prefill else None,
            peak_mem_allocated_bytes=memory.peak_allocated_bytes,
            peak_mem_reserved_bytes=memory.peak_reserved_bytes,
            nvml_peak_used_bytes=memory.nvml_peak_used_bytes,
            nvml_baseline_used_bytes=memory.nvml_baseline_used_bytes,
            peak_rss_bytes=memory.peak_rss_bytes,
            **device_state_fields(memory),
            status="ok",
            rounds=len(latencies_s),
            warmup_rounds=warmup_rounds,
            round_latencies_s=tuple(latencies_s),
            token_agreement=token_agreement,
            measured_to_predicted=measured / predicted if measured and predicted else None,
            extra=dict(extra or {}),
            **describe,
        )

    @classmethod
    def failed(cls, point: BenchPoint, describe: dict[str, Any], status: str, message: str,
               memory: MemoryReport, extra: dict[str, Any] | None = None) -> PointMetrics:
        """A point that did not finish: no rates, the memory reading at the failure, the message."""
        return cls(
            paradigm=point.paradigm, strategy=point.strategy, model=point.model, prompt_len=point.prompt_len,
            gen_len=point.gen_len, batch_size=point.batch_size, tokens_generated=0, tokens_per_s=None,
            latency_s=None, nfe=None, tokens_per_forward=None, ms_per_forward=None, prefill_ms=None,
            peak_mem_allocated_bytes=memory.peak_allocated_bytes, peak_mem_reserved_bytes=memory.peak_reserved_bytes,
            nvml_peak_used_bytes=memory.nvml_peak_used_bytes, peak_rss_bytes=memory.peak_rss_bytes,
            status=status, message=message, extra=dict(extra or {}), **describe,
        )

    @property
    def peak_bytes(self) -> int | None:
        return self.peak_mem_allocated_bytes if self.peak_mem_allocated_bytes is not None else self.peak_rss_bytes

    def to_extra_info(self) -> dict[str, Any]:
        info = dataclasses.asdict(self)
        roofline, extra = info.pop("roofline"), info.pop("extra")
        return {key: list(value) if isinstance(value, tuple) else value for key, value in info.items()} | roofline | extra


def device_state_fields(memory: MemoryReport) -> dict[str, Any]:
    """The flat extra_info keys of the NVML device state at the start and end of a tracked run."""
    start, end = memory.state_start or {}, memory.state_end or {}
    reasons_start, reasons_end = start.get("clock_event_reasons"), end.get("clock_event_reasons")
    return {
        "sm_clock_mhz_start": start.get("sm_clock_mhz"),
        "sm_clock_mhz_end": end.get("sm_clock_mhz"),
        "clock_event_reasons_start": None if reasons_start is None else tuple(reasons_start),
        "clock_event_reasons_end": None if reasons_end is None else tuple(reasons_end),
        "other_processes_bytes": end.get("other_processes_bytes", start.get("other_processes_bytes")),
    }
