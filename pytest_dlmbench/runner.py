"""Running one benchmark point under pytest-benchmark: the object behind the `dlm_bench` fixture.

Order of work for a point: model (cached, untimed) -> prompt ids -> warm-up generations, the
first one under the memory tracker -> timed rounds (--dlm-rounds, or more where the gate needs them) via
`benchmark.pedantic` with a device-synchronizing target, so pytest-benchmark's saved statistics
are true device seconds -> metrics into `benchmark.extra_info`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dlmbench.gate import rounds_to_judge
from pytest_dlmbench.grid import BenchPoint
from pytest_dlmbench.memory import MemoryReport, MemoryTracker, is_out_of_memory, memory_now, release_memory
from pytest_dlmbench.memory_model import predicted_peak_bytes
from pytest_dlmbench.metrics import PointMetrics
from pytest_dlmbench.paradigms import ForwardLog, GenerationResult, make_paradigm
from pytest_dlmbench.paradigms.base import ForwardLimitReached
from pytest_dlmbench.prompts import gsm8k_prompts, load_gsm8k, synthetic_prompts
from pytest_dlmbench.roofline import Peaks, roofline_fields
from pytest_dlmbench.timing import RegionTimer, synchronize

if TYPE_CHECKING:
    import torch

    from pytest_dlmbench.loader import ModelCache
    from pytest_dlmbench.options import Settings

# A user's generate callable: prompt ids (batch, prompt_len) -> ids (batch, gen_len), or a
# GenerationResult when it also knows its forward count.
GenerateFn = Callable[["torch.Tensor"], "torch.Tensor | GenerationResult"]


class RoundsWarning(UserWarning):
    """A point's timed rounds take longer than its time budget (they are not cut)."""


class Progress:
    """Prints a line about a long point every `interval_s` seconds (never for short points)."""

    def __init__(self, write_line: Callable[[str], None] | None, label: str, interval_s: float = 5.0) -> None:
        self.write_line = write_line
        self.label = label
        self.interval_s = interval_s
        self.phase = ""
        self.started = self.last = time.monotonic()

    def __call__(self, nfe: int) -> None:
        now = time.monotonic()
        if self.write_line is not None and now - self.last >= self.interval_s:
            self.last = now
            self.write_line(f"  {self.label}: {self.phase}, {nfe} forwards ({now - self.started:.0f} s elapsed)")


class PointRunner:
    """``dlm_bench(point)`` runs a built-in paradigm; ``dlm_bench(point, generate=fn)`` times yours."""

    def __init__(
        self,
        benchmark: Any,
        settings: Settings,
        models: ModelCache,
        write_line: Callable[[str], None] | None = None,
        record: Callable[[PointMetrics], None] | None = None,
        baselines: dict[tuple[Any, ...], torch.Tensor] | None = None,
        peaks: Peaks | None = None,
        gate_rounds: int = 0,
    ) -> None:
        self.peaks = peaks  # the device's roofs (None off CUDA)
        self.benchmark = benchmark
        self.settings = settings
        self.models = models
        self.write_line = write_line
        self.record = record
        self.baselines = baselines if baselines is not None else {}  # shape key -> baseline strategy's tokens
        self.gate_rounds = gate_rounds  # the rounds the gate needs to judge this point against its baseline
        self._gsm8k: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None

    def __call__(self, point: BenchPoint, generate: GenerateFn | None = None, vocab_size: int | None = None,
                 extra: dict[str, Any] | None = None) -> PointMetrics:
        """Measure one point. An out-of-memory point is recorded (status "oom") and skipped; any
        other failure is recorded (status "error") and raised. `extra` is saved with the point,
        whatever its status."""
        progress = Progress(self.write_line, point.id)
        run_once, describe, decoder, prime = self._prepare(point, generate, vocab_size, progress)
        failure: tuple[str, str] | None = None
        try:
            results, latencies, memory = self._measure(run_once, progress, prime)
        except Exception as error:  # noqa: BLE001 - every failure becomes a recorded result
            failure = ("oom" if is_out_of_memory(error) else "error", f"{type(error).__name__}: {error}")
            if failure[0] == "error":
                self.keep(PointMetrics.failed(point, describe, *failure, memory_now(self.settings.torch_device), extra))
                raise
        if failure is not None:  # outside the except block, so the failed frames' tensors are freed
            del run_once, prime  # pytest keeps this frame alive with the skip: drop the point's prompts now
            memory = memory_now(self.settings.torch_device)
            release_memory(self.settings.torch_device)
            self.keep(PointMetrics.failed(point, describe, *failure, memory, extra))
            pytest.skip(f"OOM: {point.id} ({failure[1].splitlines()[0][:200]})")

        metrics = self._assemble(point, describe, decoder, results, latencies, memory,
                                 self._agreement(point, results[-1].tokens), extra)
        self.benchmark.extra_info.update(metrics.to_extra_info())
        self.keep(metrics)
        return metrics

    def _assemble(self, point: BenchPoint, describe: dict[str, Any], decoder: tuple[Any, Any] | None,
                  results: list[GenerationResult], latencies: list[float], memory: MemoryReport,
                  agreement: float | None, extra: dict[str, Any] | None) -> PointMetrics:
        """The point's one record: what is saved, journaled and gated."""
        forward_ms: dict[str, list[float]] = {}
        for result in results:
            for kind, values in result.forward_ms.items():
                forward_ms.setdefault(kind, []).extend(values)
        metrics = PointMetrics.from_run(
            point, describe=describe, latencies_s=latencies, nfe=results[-1].nfe or None, forward_ms=forward_ms,
            memory=memory, warmup_rounds=self.settings.warmup, token_agreement=agreement, extra=extra,
        )
        if decoder is None:
            return metrics
        spec, paradigm = decoder  # built-in paradigms know the shape of every forward
        roofline = roofline_fields(spec, results[-1].shapes, point.batch_size, point.gen_len, self.settings.dtype,
                                   metrics.latency_s, self.peaks)
        roofline["ai_paper"] = paradigm.paper_arithmetic_intensity(spec, point.prompt_len, point.gen_len,
                                                                   point.batch_size)
        return dataclasses.replace(metrics, roofline=roofline)

    def keep(self, metrics: PointMetrics) -> None:
        """Hand a result to the session (summary table, saved file, gate)."""
        if self.record is not None:
            self.record(metrics)

    def _prepare(self, point: BenchPoint, generate: GenerateFn | None, vocab_size: int | None,
                 progress: Progress) -> tuple[Callable[[], GenerationResult], dict[str, Any], tuple[Any, Any] | None,
                                              Callable[[], None] | None]:
        """A callable that runs one whole generation, the point's labels, (spec, paradigm) for the
        built-in paradigms, and, on a model's first point, a short untimed start-up run."""
        settings = self.settings
        device = settings.torch_device
        if generate is None:
            loaded = self.models.get(point.model)
            spec, model = loaded.spec, loaded.model
            paradigm = make_paradigm(point.paradigm, settings.decode_for(loaded.weights), point.strategy)
            paradigm.validate(spec, point.prompt_len, point.gen_len, point.batch_size)
            prompt_ids = self._prompts(point, loaded)
            phases = paradigm.memory_phases(spec, point.prompt_len, point.gen_len)
            describe = {"weights": loaded.weights, "prompt_source": settings.prompts,
                        "predicted_peak_bytes": predicted_peak_bytes(spec, phases, point.batch_size, settings.dtype),
                        **paradigm.describe(spec, point.gen_len)}

            def run_once() -> GenerationResult:
                log = ForwardLog(RegionTimer(device), progress)
                return paradigm.generate(model, spec, prompt_ids, point.gen_len, log)

            def prime() -> None:  # a few forwards absorb the process's CUDA/cuBLAS start-up, untimed
                with contextlib.suppress(ForwardLimitReached):
                    paradigm.generate(model, spec, prompt_ids, point.gen_len, ForwardLog(RegionTimer(device), limit=4))

            decoder = (spec, paradigm)
            if not self.models.first_use(point.model):
                prime = None
        else:
            decoder = prime = None
            if vocab_size is None:
                raise ValueError("dlm_bench(point, generate=fn) also needs vocab_size= for the prompt ids")
            prompt_ids = synthetic_prompts(vocab_size, point.batch_size, point.prompt_len, settings.seed, device)
            describe = {"weights": "user", "block_size": None, "steps": None}

            def run_once() -> GenerationResult:
                out = generate(prompt_ids)
                return out if isinstance(out, GenerationResult) else GenerationResult(tokens=out, nfe=0)

        return run_once, describe | {"dtype": settings.dtype, "device": settings.device}, decoder, prime

    def _measure(self, run_once: Callable[[], GenerationResult], progress: Progress,
                 prime: Callable[[], None] | None) -> tuple[list[GenerationResult], list[float], MemoryReport]:
        """Start-up run, warm-up (memory tracked on the first), then the timed rounds under pytest-benchmark."""
        import torch

        settings = self.settings
        device = settings.torch_device
        with torch.inference_mode():
            if prime is not None:
                prime()
            memory, warm_s = MemoryReport(), None
            for index in range(settings.warmup):
                progress.phase = f"warm-up {index + 1}/{settings.warmup}"
                tracker = MemoryTracker(device) if index == 0 else nullcontext()
                began = time.perf_counter()
                with tracker:
                    run_once()
                synchronize(device)
                warm_s = time.perf_counter() - began
                if index == 0:
                    memory = tracker.report
            rounds = max(settings.rounds, self.gate_rounds)
            if warm_s is not None and rounds * warm_s > settings.max_time_s:
                warnings.warn(
                    f"{progress.label}: {rounds} timed rounds take about {rounds * warm_s:.0f} s after a {warm_s:.1f} s "
                    f"warm-up generation, over --dlm-max-time={settings.max_time_s:g} s; rounds are not cut: the gate "
                    f"needs {rounds_to_judge(30)} a side to judge 30 points at once (--dlm-rounds sets them)",
                    RoundsWarning, stacklevel=2)

            results: list[GenerationResult] = []
            latencies: list[float] = []

            def timed_round() -> GenerationResult:
                progress.phase = f"round {len(results) + 1}/{rounds}"
                began = time.perf_counter()
                result = run_once()
                synchronize(device)
                latencies.append(time.perf_counter() - began)
                results.append(result)
                return result

            tracker = MemoryTracker(device) if settings.warmup == 0 else nullcontext()
            with tracker:
                self.benchmark.pedantic(timed_round, setup=lambda: synchronize(device), rounds=rounds,
                                        iterations=1, warmup_rounds=0)
            if settings.warmup == 0:
                memory = tracker.report
        return results, latencies, memory

    def _agreement(self, point: BenchPoint, tokens: torch.Tensor) -> float | None:
        """Share of tokens equal to the baseline's on the same shape, when this session ran it."""
        if point.strategy == "baseline":
            self.baselines[point.shape_key] = tokens.cpu()
            return None
        baseline = self.baselines.get(point.shape_key)
        if baseline is None or baseline.shape != tokens.shape:
            return None
        return float((tokens.cpu() == baseline).float().mean())

    def _prompts(self, point: BenchPoint, loaded: Any) -> torch.Tensor:
        settings = self.settings
        if settings.prompts == "synthetic":
            return synthetic_prompts(loaded.spec.prompt_vocab_limit, point.batch_size, point.prompt_len, settings.seed, settings.torch_device)
        if self._gsm8k is None:
            self._gsm8k = load_gsm8k(settings.dataset)
        return gsm8k_prompts(loaded.tokenizer(), self._gsm8k, point.batch_size, point.prompt_len, settings.torch_device)
