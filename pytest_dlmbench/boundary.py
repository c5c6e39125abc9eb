"""The OOM boundary: the largest batch that completes a full generation, found with few probes.

Search: double the batch from 1 until a probe runs out of memory (or `max_batch` is reached),
then bisect between the last batch that fit and the first that did not: O(log max_batch) probes.
A probe is the paradigm's `probe()`: the part of a generation that reaches its peak memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_dlmbench.core import PointLabels
from pytest_dlmbench.device import total_memory_bytes
from pytest_dlmbench.memory_model import CARDS_GIB, predicted_max_batch
from pytest_dlmbench.probe import ProbeResult, probe_arguments, probe_in_process, probe_isolated, probe_user

if TYPE_CHECKING:
    from pytest_dlmbench.core import BenchPoint, Settings
    from pytest_dlmbench.memory_model import Phase
    from pytest_dlmbench.models import ModelSpec
    from pytest_dlmbench.paradigms.base import ForwardShape


@dataclass(frozen=True)
class Boundary:
    max_batch_size: int  # 0: not even batch 1 fits
    first_oom_batch: int | None  # None: nothing up to max_batch ran out of memory
    probes: tuple[ProbeResult, ...] = field(default_factory=tuple)

    @property
    def at_max(self) -> ProbeResult:
        """The probe at the max batch; at batch 0 (nothing fits) one with no readings."""
        return next((p for p in self.probes if p.batch_size == self.max_batch_size), ProbeResult(0, False))


def find_max_batch(probe: Callable[[int], ProbeResult], max_batch: int) -> Boundary:
    """Doubling, then bisection; every batch is probed at most once."""
    probes: dict[int, ProbeResult] = {}

    def fits(batch: int) -> bool:
        if batch not in probes:
            probes[batch] = probe(batch)
        return probes[batch].fits

    low, high = 0, None  # low fits (0: trivially), high does not
    while high is None and low < max_batch:
        batch = min(max(1, 2 * low), max_batch)
        if fits(batch):
            low = batch
        else:
            high = batch
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return Boundary(low, high, tuple(probes[b] for b in sorted(probes)))


def device_memory_bytes(settings: Settings) -> int:
    """The memory the boundary search works within: the --dlm-memory-limit, else the device's."""
    if settings.memory_limit_gib is not None:
        return int(settings.memory_limit_gib * 2**30)
    return total_memory_bytes(settings.torch_device)


@dataclass(frozen=True)
class Search:
    """What a boundary search needs of its decoder, built-in or a user's."""

    labels: PointLabels
    probe: Callable[[int], ProbeResult]
    describe: dict[str, Any]
    isolated: bool
    spec: ModelSpec | None = None  # None: no memory model (a user's generate on an unregistered model)
    phases: Callable[[], list[Phase]] | None = None  # the analytic memory model's, read after the search
    concatenating: bool = False


class BoundaryRunner:
    """The `dlm_boundary` fixture: ``dlm_boundary(point)`` finds the point's largest batch, then
    times a full generation at that batch through `dlm_bench` and saves the search beside it;
    ``dlm_boundary(point, generate=fn)`` does the same for a user's generate (probed in process:
    a function does not travel to a fresh one)."""

    def __init__(self, settings: Settings, models: Any, bench: Any) -> None:
        self.settings = settings
        self.models = models
        self.bench = bench

    def __call__(self, point: BenchPoint, generate: Any = None, vocab_size: int | None = None) -> Any:
        import pytest

        from pytest_dlmbench.core import MemoryReport
        from pytest_dlmbench.record import failed_record

        settings = self.settings
        search = self._builtin(point) if generate is None else self._user(point, generate, vocab_size)
        boundary = find_max_batch(search.probe, settings.max_batch)
        spec, phases = search.spec, search.phases() if search.phases is not None else None
        found = {
            "max_batch_size": boundary.max_batch_size,
            "first_oom_batch": boundary.first_oom_batch,
            "boundary_probes": len(boundary.probes),
            "boundary_probe_batches": [p.batch_size for p in boundary.probes],
            "boundary_probe_peak_bytes": [p.peak_allocated_bytes for p in boundary.probes],
            "memory_limit_gib": settings.memory_limit_gib,
            "isolated_probes": search.isolated,
            "predicted_max_batch": None if spec is None or not phases else predicted_max_batch(
                spec, phases, settings.dtype, device_memory_bytes(settings), search.concatenating),
            **{f"predicted_max_batch_{gib}gib": None if spec is None or not phases else predicted_max_batch(
                spec, phases, settings.dtype, gib * 2**30, search.concatenating) for gib in CARDS_GIB},
        }
        at_max = boundary.at_max
        estimate_s = at_max.generation_s(point.gen_len)
        found |= {"peak_mem_at_max_bytes": at_max.peak_allocated_bytes,
                  "probe_ms_per_forward_at_max": at_max.forward_ms,
                  "estimated_generation_s": estimate_s}
        labels = search.labels.at_batch(max(1, boundary.max_batch_size))
        boundary_id = search.labels.point.boundary_id
        if boundary.max_batch_size == 0 or (estimate_s is not None and estimate_s > settings.max_time_s):
            if boundary.max_batch_size == 0:  # saved as an "oom" point, like any point that ran out of memory
                status, reason = "oom", f"OOM: {boundary_id} does not fit at batch 1"
            else:  # the search is the result; a generation this long would overrun the time budget
                status, reason = "untimed", (
                    f"boundary {boundary_id}: max batch {boundary.max_batch_size}; a full generation there "
                    f"would take ~{estimate_s:.0f} s, over --dlm-max-time={settings.max_time_s:g}: not timed")
            memory = MemoryReport(peak_allocated_bytes=at_max.peak_allocated_bytes)
            self.bench.keep(failed_record(labels, search.describe, status, reason, memory,
                                          found | {"probe_to_full_peak_ratio": None}))
            pytest.skip(reason)
        # the full generation is the check: if it runs out of memory where the probe fitted, the point
        # is saved "oom" with the search (allocator fragmentation can do that: see docs/memory.md)
        metrics = self.bench(labels.point, generate=generate, vocab_size=vocab_size,
                             extra=found | {"probe_to_full_peak_ratio": None})
        full_peak = metrics.peak_mem_allocated_bytes
        if full_peak and at_max.peak_allocated_bytes:  # how well the probe predicts the peak
            metrics = self.bench.amend(metrics, probe_to_full_peak_ratio=at_max.peak_allocated_bytes / full_peak)
        return metrics

    def _builtin(self, point: BenchPoint) -> Search:
        """A built-in paradigm's search: its cheap probes, in a fresh process each where isolated."""
        import dataclasses

        from pytest_dlmbench.models import get_spec
        from pytest_dlmbench.paradigms.base import paradigm_for
        from pytest_dlmbench.runtimes import RUNTIMES

        settings = self.settings
        labels = PointLabels.of(point, settings)
        if settings.isolate_probes:
            self.models.release()  # the probe processes need the whole device
            argv = probe_arguments(settings, point)

            def probe(batch: int) -> ProbeResult:
                return probe_isolated(argv, batch)
        else:
            loaded = self.models.get(point.model)
            paradigm = paradigm_for(point, settings, labels.weights)

            def probe(batch: int) -> ProbeResult:
                return probe_in_process(settings, dataclasses.replace(point, batch_size=batch), loaded.model,
                                        loaded.spec, paradigm)

        spec = get_spec(point.model)
        decoder = paradigm_for(point, settings, labels.weights)
        decoder.validate(spec, point.prompt_len, point.gen_len, 1)
        return Search(labels, probe, decoder.describe(spec, point.gen_len), settings.isolate_probes, spec,
                      lambda: decoder.memory_phases(spec, point.prompt_len, point.gen_len),
                      RUNTIMES[point.runtime].concatenates)

    def _user(self, point: BenchPoint, generate: Any, vocab_size: int | None) -> Search:
        """A user's generate: each probe is a whole generation at that batch, in this process; the
        memory model comes from the forwards it logged, where `point.model` names a registered model."""
        import dataclasses

        from pytest_dlmbench.core import UNDESCRIBED, USER_RUNTIME
        from pytest_dlmbench.models import MODEL_SPECS
        from pytest_dlmbench.record import phases_of

        settings = self.settings
        spec = MODEL_SPECS.get(point.model)
        point = dataclasses.replace(point, runtime=USER_RUNTIME)
        logged: list[tuple[ForwardShape, ...]] = []

        def probe(batch: int) -> ProbeResult:
            result, shapes = probe_user(settings, dataclasses.replace(point, batch_size=batch), generate, vocab_size)
            if result.fits and not logged:
                logged.append(shapes)
            return result

        return Search(PointLabels.of(point, settings, "user"), probe, dict(UNDESCRIBED), False, spec,
                      lambda: phases_of(logged[0]) if logged else [])
