"""A point's record, built in one place: its labels (`PointLabels`, made once per point), what the
decoder adds, the readings, and the roofline. Timed, boundary, untimed, out-of-memory and crashed
points all get theirs here, so a record says the same about what ran whatever became of it."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_dlmbench.core import EnergyReading, MemoryReport, PointLabels, PointMetrics
from pytest_dlmbench.memory_model import Phase, predicted_peak_bytes
from pytest_dlmbench.roofline import Peaks, empty_roofline, paper_formula, roofline_fields

if TYPE_CHECKING:
    from pytest_dlmbench.models import ModelSpec
    from pytest_dlmbench.paradigms import GenerationResult, Paradigm
    from pytest_dlmbench.paradigms.base import ForwardShape


@dataclass(frozen=True)
class Decoder:
    """What decoded a point, as far as the analytic models need it: the model's shape, the paradigm
    (None: a user's generate), and whether its runtime concatenates the cache (the roofline and the
    memory model count that copy)."""

    spec: ModelSpec
    paradigm: Paradigm | None
    concatenating: bool


def phases_of(shapes: tuple[ForwardShape, ...]) -> list[Phase]:
    """The memory model's phases of a generation known only by its forwards (a user's generate):
    each distinct forward, with the cache it saw and wrote."""
    return list(dict.fromkeys(
        Phase(shape.context - shape.tokens + shape.kv_written, shape.tokens, shape.logits,
              cache_grows=bool(shape.kv_written) and not shape.in_place and shape.context > shape.tokens)
        for shape in shapes))


@dataclass(frozen=True)
class Measurement:
    results: list[GenerationResult]  # one per timed round
    latencies_s: list[float]
    memory: MemoryReport
    warmup_rounds: int = 0
    capture_s: float | None = None  # the runtime's capture time, all untimed runs together
    energy: EnergyReading | None = None  # over the timed rounds


def request_times(results: list[GenerationResult], latencies_s: list[float]) -> tuple[list[float], list[float]]:
    """Per row of every round: seconds to its first committed token, and to its last (where the
    decoder logged no forward, every row waits for the whole round and the first is unknown)."""
    first: list[float] = []
    last: list[float] = []
    for result, round_s in zip(results, latencies_s):
        first.extend(ms / 1e3 for ms in result.first_token_ms)
        last.extend([ms / 1e3 for ms in result.last_token_ms] or [round_s] * result.tokens.shape[0])
    return first, last


def timed_record(labels: PointLabels, describe: dict[str, Any], measurement: Measurement, decoder: Decoder | None,
                 peaks: Peaks | None, token_agreement: float | None = None, runtime_agreement: float | None = None,
                 extra: dict[str, Any] | None = None) -> PointMetrics:
    """A point that ran its timed rounds; its roofline where a built-in decoder says what each forward was."""
    point, results = labels.point, measurement.results
    forward_ms: dict[str, list[float]] = {}
    for result in results:
        for kind, values in result.forward_ms.items():
            forward_ms.setdefault(kind, []).extend(values)
    last = results[-1]
    if decoder is not None and decoder.paradigm is None and last.shapes:  # a user's: from its forwards
        describe = describe | {"predicted_peak_bytes": predicted_peak_bytes(
            decoder.spec, phases_of(last.shapes), point.batch_size, labels.dtype, decoder.concatenating)}
    first_token_s, request_latency_s = request_times(results, measurement.latencies_s)
    record = PointMetrics.from_run(
        labels, describe=describe, latencies_s=measurement.latencies_s, nfe=last.nfe or None, forward_ms=forward_ms,
        memory=measurement.memory, warmup_rounds=measurement.warmup_rounds, decoded_len=last.decoded_len,
        token_agreement=token_agreement, runtime_agreement=runtime_agreement, capture_s=measurement.capture_s,
        extra=extra, first_token_s=first_token_s, request_latency_s=request_latency_s, energy=measurement.energy,
    )
    if last.row_nfe and all(last.row_nfe):
        record = dataclasses.replace(record, row_tokens_per_forward=statistics.fmean(
            point.gen_len / nfe for nfe in last.row_nfe))
    if decoder is None:
        return dataclasses.replace(record, roofline=empty_roofline())
    if not last.shapes:  # a user's generate that logged no forward
        return dataclasses.replace(record, roofline=empty_roofline())
    roofline = roofline_fields(decoder.spec, last.shapes, point.batch_size, point.gen_len, labels.dtype,
                               record.latency_s, peaks, concatenating_cache=decoder.concatenating)
    paper = None if decoder.paradigm is None else decoder.paradigm.paper_arithmetic_intensity(
        decoder.spec, point.prompt_len, point.gen_len, point.batch_size)
    roofline["ai_paper_flop_per_element"] = paper
    roofline["ai_paper_formula"] = None if paper is None or decoder.paradigm is None else paper_formula(
        decoder.paradigm.paper_equation)
    return dataclasses.replace(record, roofline=roofline)


def failed_record(labels: PointLabels, describe: dict[str, Any], status: str, message: str,
                  memory: MemoryReport | None = None, extra: dict[str, Any] | None = None) -> PointMetrics:
    """A point that did not finish ("oom", "error", "untimed"), with every roofline key null."""
    return dataclasses.replace(PointMetrics.failed(labels, describe, status, message, memory or MemoryReport(), extra),
                               roofline=empty_roofline())
