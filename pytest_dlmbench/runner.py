"""Running one benchmark point under pytest-benchmark: the object behind the `dlm_bench` fixture.

Three steps, each its own function: `plan` (model, cached and untimed; prompt ids; the decoder;
the labels), `measure` (warm-up generations, the first under the memory tracker, then timed
rounds (--dlm-rounds, or more where the gate needs them) via `benchmark.pedantic` with a
device-synchronizing target, so pytest-benchmark's statistics are true device seconds), and
then the point's one record (record.py) into `benchmark.extra_info`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_dlmbench.core import (
    DEFAULT_ROUNDS,
    UNDESCRIBED,
    USER_RUNTIME,
    BenchPoint,
    MemoryReport,
    PointLabels,
    PointMetrics,
)
from pytest_dlmbench.device import synchronize
from pytest_dlmbench.energy import EnergyMeter
from pytest_dlmbench.memory import MemoryTracker, is_out_of_memory, memory_now, release_memory
from pytest_dlmbench.memory_model import predicted_peak_bytes
from pytest_dlmbench.models import MODEL_SPECS
from pytest_dlmbench.paradigms import ForwardLog, GenerationResult, Paradigm
from pytest_dlmbench.paradigms.base import ForwardLimitReached, call_user_generate, paradigm_for, user_vocab
from pytest_dlmbench.prompts import gsm8k_prompts, load_gsm8k, synthetic_prompts
from pytest_dlmbench.record import Decoder, Measurement, failed_record, timed_record
from pytest_dlmbench.runtimes import Runtime, make_runtime
from pytest_dlmbench.timing import RegionTimer
from pytest_dlmbench.trace import write_commits

if TYPE_CHECKING:
    import torch

    from pytest_dlmbench.core import Settings
    from pytest_dlmbench.loader import LoadedModel, ModelCache
    from pytest_dlmbench.roofline import Peaks
    from pytest_dlmbench.session import DlmSession

# A user's generate callable: prompt ids (batch, prompt_len) [, the point's ForwardLog, whose
# `forward(kind, tokens, context, logits)` block wraps each model forward] -> ids (batch, gen_len),
# or a GenerationResult.
GenerateFn = Callable[..., "torch.Tensor | GenerationResult"]


class RoundsWarning(UserWarning):
    """A point's timed rounds take longer than its time budget (they are not cut)."""


class CaptureWarning(UserWarning):
    """A graph was captured during a timed round (a forward shape the untimed runs did not have)."""


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


@dataclass(frozen=True)
class PointPlan:
    """What one point runs: a whole generation, its labels, and for the built-in paradigms the
    decoder (the roofline reads its forwards) and the baseline strategy's decoder (token agreement)."""

    labels: PointLabels
    run_once: Callable[[], GenerationResult]
    describe: dict[str, Any]  # what the decoder adds to the labels: block_size, steps, acceptance, ...
    decoder: Decoder | None = None
    prime: Callable[[], None] | None = None  # on a model's first point: a short untimed start-up run
    baseline_tokens: Callable[[], torch.Tensor] | None = None  # the baseline strategy's output, untimed
    runtime: Runtime | None = None  # the built-in paradigms' execution runtime, its graphs kept for the point

    @property
    def point(self) -> BenchPoint:
        return self.labels.point


class PointRunner:
    """``dlm_bench(point)`` runs a built-in paradigm; ``dlm_bench(point, generate=fn)`` times yours."""

    def __init__(self, benchmark: Any, settings: Settings, models: ModelCache, session: DlmSession, test_id: str, *,
                 peaks: Peaks | None = None, write_line: Callable[[str], None] | None = None,
                 on_oom: Callable[[BenchPoint, PointMetrics], None] = lambda point, record: None) -> None:
        self.benchmark = benchmark
        self.settings = settings
        self.models = models
        self.session = session  # keeps the records; holds the tokens that agreement compares with
        self.test_id = test_id
        self.peaks = peaks  # the device's roofs (None where unknown)
        self.write_line = write_line
        self.on_oom = on_oom  # called with an out-of-memory point's record (the fixture skips the test)

    @property
    def gate_rounds(self) -> int:
        """The rounds the gate needs to judge this point against its baseline."""
        return self.session.gate_rounds.get(self.test_id, 0)

    def __call__(self, point: BenchPoint, generate: GenerateFn | None = None, vocab_size: int | None = None,
                 extra: dict[str, Any] | None = None) -> PointMetrics:
        """Measure one point and return its record. An out-of-memory point is recorded, handed to
        `on_oom` and returned with status "oom"; any other failure is recorded (status "error") and
        raised. `extra` is saved with the point, whatever its status."""
        progress = Progress(self.write_line, point.id)
        plan = self.plan(point, generate, vocab_size, progress)
        point = plan.point  # a user's generate is labelled with its own runtime
        device = self.settings.torch_device
        try:
            measurement = self.measure(plan, progress)
        except Exception as error:
            status, message = "oom" if is_out_of_memory(error) else "error", f"{type(error).__name__}: {error}"
            if status == "error":
                self.keep(failed_record(plan.labels, plan.describe, status, message, memory_now(device), extra))
                raise
        else:
            last = measurement.results[-1]
            tokens = last.tokens
            if self.settings.acceptance_trace and plan.describe.get("acceptance") == "model":
                write_commits(self.settings.acceptance_trace, point, last.commits)
            record = timed_record(plan.labels, plan.describe, measurement, plan.decoder, self.peaks,
                                  self._agreement(plan, tokens), self._runtime_agreement(point, tokens), extra)
            record = dataclasses.replace(record, point_wall_s=time.monotonic() - progress.started)
            self.keep(record)
            return record
        labels, describe = plan.labels, plan.describe
        del plan  # outside the except block, so the failed frames' tensors (and the prompts) are freed
        memory = memory_now(device)
        release_memory(device)
        record = failed_record(labels, describe, status, message, memory, extra)
        self.keep(record)
        self.on_oom(point, record)
        return record

    def amend(self, record: PointMetrics, **extra: Any) -> PointMetrics:
        """The record with more keys, kept and saved in its place (e.g. what a boundary search learns
        from the timed generation)."""
        amended = dataclasses.replace(record, extra=record.extra | extra)
        self.keep(amended)
        return amended

    def keep(self, record: PointMetrics) -> None:
        """Hand the point's record to the session (summary table, saved file, gate); a finished
        point's goes into its pytest-benchmark entry too (an unfinished one is saved apart)."""
        if record.status == "ok":
            self.benchmark.extra_info.update(record.to_extra_info())
        self.session.keep(self.test_id, record)

    def plan(self, point: BenchPoint, generate: GenerateFn | None, vocab_size: int | None,
             progress: Progress) -> PointPlan:
        settings = self.settings
        device = settings.torch_device
        if generate is not None:
            return self._user_plan(point, generate, vocab_size, progress)

        loaded = self.models.get(point.model)
        labels = PointLabels.of(point, settings, loaded.weights)
        spec, model = loaded.spec, loaded.model
        paradigm = paradigm_for(point, settings, labels.weights)
        prompt_ids = self._prompts(point, loaded)
        phases = paradigm.memory_phases(spec, point.prompt_len, point.gen_len)
        runtime = make_runtime(point.runtime, model)
        describe = {"predicted_peak_bytes": predicted_peak_bytes(spec, phases, point.batch_size, settings.dtype,
                                                                 runtime.concatenates),
                    **paradigm.describe(spec, point.gen_len)}

        def run(decoder: Paradigm, log: ForwardLog) -> GenerationResult:
            return decoder.generate(runtime, spec, prompt_ids, point.gen_len, log)

        def prime() -> None:  # a few forwards absorb the process's CUDA/cuBLAS start-up, untimed
            with contextlib.suppress(ForwardLimitReached):
                run(paradigm, ForwardLog(RegionTimer(device), limit=4))

        def baseline_tokens() -> torch.Tensor:
            baseline = paradigm_for(point, settings, labels.weights, "baseline")
            return run(baseline, ForwardLog(RegionTimer(device))).tokens

        return PointPlan(labels, lambda: run(paradigm, ForwardLog(RegionTimer(device), progress)), describe,
                         Decoder(spec, paradigm, runtime.concatenates),
                         prime if self.models.first_use(point.model) else None, baseline_tokens, runtime)

    def measure(self, plan: PointPlan, progress: Progress) -> Measurement:
        """Start-up run, warm-up (memory tracked on the first), then the timed rounds under pytest-benchmark."""
        import torch

        settings = self.settings
        device = settings.torch_device
        with torch.inference_mode():
            if plan.prime is not None:
                plan.prime()
            memory, warm_s = MemoryReport(), None
            if settings.warmup == 0 and plan.runtime is not None and plan.runtime.capture_s is not None:
                progress.phase = "capturing graphs"
                assert plan.decoder is not None and plan.decoder.paradigm is not None  # a runtime's is built in
                # then a shape runs only when captured
                fixed = plan.decoder.paradigm.fixed_shapes(plan.decoder.spec, plan.point.gen_len)
                with plan.runtime.skipping_seen_shapes() if fixed else nullcontext():
                    plan.run_once()  # untimed: capture is never timed, even without warm-up
            for index in range(settings.warmup):
                progress.phase = f"warm-up {index + 1}/{settings.warmup}"
                tracker = MemoryTracker(device) if index == 0 else None
                began = time.perf_counter()
                with tracker or nullcontext():
                    plan.run_once()
                synchronize(device)
                warm_s = time.perf_counter() - began
                if tracker is not None:
                    memory = tracker.report
            captured_s = plan.runtime.capture_s if plan.runtime is not None else None
            rounds = max(settings.rounds, self.gate_rounds)
            if warm_s is not None and rounds * warm_s > settings.max_time_s:
                warnings.warn(
                    f"{progress.label}: {rounds} timed rounds take about {rounds * warm_s:.0f} s after a "
                    f"{warm_s:.1f} s warm-up generation, over --dlm-max-time={settings.max_time_s:g} s; rounds are "
                    f"not cut: the gate needs {DEFAULT_ROUNDS} a side to judge 30 points at once "
                    "(--dlm-rounds sets them)",
                    RoundsWarning, stacklevel=2)

            results: list[GenerationResult] = []
            latencies: list[float] = []

            def timed_round() -> GenerationResult:
                progress.phase = f"round {len(results) + 1}/{rounds}"
                began = time.perf_counter()
                result = plan.run_once()
                synchronize(device)
                latencies.append(time.perf_counter() - began)
                results.append(result)
                return result

            tracker = MemoryTracker(device) if settings.warmup == 0 else None
            energy = EnergyMeter(device)
            with tracker or nullcontext(), energy:
                self.benchmark.pedantic(timed_round, setup=lambda: synchronize(device), rounds=rounds,
                                        iterations=1, warmup_rounds=0)
            if tracker is not None:
                memory = tracker.report
        capture_s = plan.runtime.capture_s if plan.runtime is not None else None
        if capture_s != captured_s:
            warnings.warn(f"{progress.label}: a forward shape was first captured in a timed round (its capture, "
                          f"{(capture_s or 0.0) - (captured_s or 0.0):.2f} s, is in that round's time)", CaptureWarning,
                          stacklevel=2)
        return Measurement(results, latencies, memory, settings.warmup, capture_s, energy.reading)

    def _user_plan(self, point: BenchPoint, generate: GenerateFn, vocab_size: int | None,
                   progress: Progress) -> PointPlan:
        """A user's generate: labelled runtime "user"; where `point.model` names a registered spec
        and generate records its forwards in the log it is handed, the roofline and the memory
        model follow from those forwards as for the built-in decoders."""
        settings, device = self.settings, self.settings.torch_device
        spec = MODEL_SPECS.get(point.model)
        point = dataclasses.replace(point, runtime=USER_RUNTIME)
        prompt_ids = synthetic_prompts(user_vocab(point.model, vocab_size), point.batch_size, point.prompt_len,
                                       settings.seed, device)

        def run_user() -> GenerationResult:
            log = ForwardLog(RegionTimer(device), progress)
            out = call_user_generate(generate, prompt_ids, log)
            check_generated(point, out.tokens if isinstance(out, GenerationResult) else out)
            return out if isinstance(out, GenerationResult) else log.result(out)

        decoder = None if spec is None else Decoder(spec, None, concatenating=False)
        return PointPlan(PointLabels.of(point, settings, "user", prompt_source="synthetic"), run_user,
                         dict(UNDESCRIBED), decoder)

    def _agreement(self, plan: PointPlan, tokens: torch.Tensor) -> float | None:
        """Share of tokens equal to the baseline strategy's on the same shape, wherever the session
        runs that baseline: computed (untimed) if this point runs first, so test order cannot change it."""
        point = plan.point
        if plan.baseline_tokens is None:
            return None
        if point.strategy == "baseline":
            self.session.tokens[point.shape_key] = tokens.cpu()
            return None
        if point.shape_key not in self.session.tokens:
            if not self.session.runs_baseline(point):
                return None
            import torch

            with torch.inference_mode():
                self.session.tokens[point.shape_key] = plan.baseline_tokens().cpu()
        baseline = self.session.tokens[point.shape_key]
        return float((tokens.cpu() == baseline).float().mean()) if baseline.shape == tokens.shape else None

    def _runtime_agreement(self, point: BenchPoint, tokens: torch.Tensor) -> float | None:
        """Share of tokens equal to the same point under the runtime the session ran first."""
        key = ("runtime", *point.runtime_key)
        first = self.session.tokens.get(key)
        if first is None:
            self.session.tokens[key] = tokens.cpu()
            return None
        return float((tokens.cpu() == first).float().mean()) if first.shape == tokens.shape else None

    def _prompts(self, point: BenchPoint, loaded: LoadedModel) -> torch.Tensor:
        settings = self.settings
        if settings.prompts == "synthetic":
            return synthetic_prompts(loaded.spec.prompt_vocab_limit, point.batch_size, point.prompt_len, settings.seed,
                                     settings.torch_device)
        return gsm8k_prompts(loaded.tokenizer(), load_gsm8k(settings.dataset), point.batch_size, point.prompt_len,
                             settings.torch_device)


def check_generated(point: BenchPoint, tokens: Any) -> None:
    """A user's generate must return the point's tokens, (batch, gen_len) ids: fewer would be
    counted as the point's and inflate tokens/s."""
    shape = tuple(getattr(tokens, "shape", ()))
    if shape != (point.batch_size, point.gen_len):
        raise ValueError(f"{point.id}: generate returned {type(tokens).__name__} of shape {shape}; the point needs "
                         f"token ids of shape (batch_size, gen_len) = ({point.batch_size}, {point.gen_len})")
