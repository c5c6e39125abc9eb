"""The types every layer shares: the point, its record, the settings. Imports nothing of this package.

A point is what is measured (`BenchPoint`); its record (`PointMetrics`) is what the gate judges,
the saved `extra_info`, the journal line and `dlmbench compare` read; `Settings` are the parsed
--dlm-* options (options.py builds them from one table).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DEFAULT_SIMULATED_TPF = 3.0  # tokens per forward of the parallel strategies on random weights
# gate.rounds_needed(6, 30, ...) == 6: the fewest a side to judge the standard grid's 30 points at once
DEFAULT_ROUNDS = 6
DEFAULT_MAX_ROUNDS = 20
RUNTIME_NAMES = ("graphs", "eager")  # runtimes/: static shapes replayed as CUDA graphs; transformers as published
DEFAULT_RUNTIME = "graphs"
USER_RUNTIME = "user"  # the runtime label of a user's generate: the harness does not run its forwards
UNNAMED_RUNTIMES = (DEFAULT_RUNTIME, USER_RUNTIME)  # not in point ids (a user's point keeps the id it had)
SAVED_BEFORE_RUNTIMES = "eager"  # points saved without a runtime key ran transformers' eager forwards
FIDELITY_NAMES = ("reference", "lean")  # paradigms/scoring.py: the published code's per-forward work, or the least
DEFAULT_FIDELITY = "reference"
SAVED_BEFORE_FIDELITY = "lean"  # points saved without a fidelity key did the least per forward
# What the seed paper's Appendix A closed form (`ai_paper_flop_per_element`) is and leaves out,
# beside the first-principles `arithmetic_intensity`: saved with it in `ai_paper_formula`.
PAPER_AI_CAVEAT = ("FLOP per element, not per byte (not comparable with the ridge); attention projections as "
                   "2 d^2 per token, where q, k, v and o are (2 + 2 n_kv / n_h) d^2 (GQA's smaller k and v left "
                   "out); FFN as alpha^2 d^2, where SwiGLU's three matrices are 3 alpha d^2; no LM head")
# Point axes that change what is measured, not the code under test: the gate does not judge across them.
# Each maps to the value that points saved before the axis existed ran under.
MEASUREMENT_AXES = {"runtime": SAVED_BEFORE_RUNTIMES, "fidelity": SAVED_BEFORE_FIDELITY}


@dataclass(frozen=True, order=True)
class BenchPoint:
    """One measured configuration."""

    paradigm: str
    model: str
    prompt_len: int
    gen_len: int
    batch_size: int
    strategy: str = "baseline"
    runtime: str = DEFAULT_RUNTIME
    fidelity: str = DEFAULT_FIDELITY

    def __post_init__(self) -> None:
        for name in ("prompt_len", "gen_len", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BenchPoint {name}={value!r}: must be an integer >= 1")

    @property
    def id(self) -> str:
        """`dlm-llada-8b-p40-g256-b1`, then the strategy, runtime and fidelity where not the default."""
        return self._id(f"-b{self.batch_size}")

    @property
    def boundary_id(self) -> str:
        """The id of the point's OOM boundary search: its id without the batch size."""
        return self._id("")

    def _id(self, batch: str) -> str:
        base = f"{self.paradigm}-{self.model}-p{self.prompt_len}-g{self.gen_len}{batch}"
        suffixes = (self.strategy != "baseline" and self.strategy,
                    self.runtime not in UNNAMED_RUNTIMES and self.runtime,
                    self.fidelity != DEFAULT_FIDELITY and self.fidelity)
        return "-".join([base, *(suffix for suffix in suffixes if suffix)])

    @property
    def shape_key(self) -> tuple[str | int, ...]:
        """The point without its strategy: strategies of one shape (runtime, fidelity) are compared on it."""
        return (self.paradigm, self.model, self.prompt_len, self.gen_len, self.batch_size, self.runtime,
                self.fidelity)

    @property
    def acceptance_key(self) -> tuple[str | int, ...]:
        """The point without its runtime and fidelity: what an acceptance trace is matched on."""
        return (self.paradigm, self.model, self.prompt_len, self.gen_len, self.batch_size,
                self.strategy)

    @property
    def runtime_key(self) -> tuple[str | int, ...]:
        """The point without its runtime: runtimes of one point are compared on it."""
        return (*self.acceptance_key, self.fidelity)


# The decoder's labels where no decoder describes the point (a user's generate, a crashed worker).
UNDESCRIBED: dict[str, Any] = {"block_size": None, "steps": None}


@dataclass(frozen=True)
class PointLabels:
    """What ran a point, made once per point and written into each of its records alike: timed,
    boundary, untimed, out of memory, crashed in a worker."""

    point: BenchPoint
    weights: str  # "random", "checkpoint" or "user"
    dtype: str
    device: str
    temperature: float = 0.0
    gpu_index: int | None = None  # as the session numbers the GPUs
    worker: str | None = None  # the pytest-xdist worker (None: one process)
    prompt_source: str = "synthetic"

    @classmethod
    def of(cls, point: BenchPoint, settings: Settings, weights: str | None = None, **where: Any) -> PointLabels:
        """The labels the point and the session give; `weights` defaults to the session's for the
        model, `where` overrides the process's gpu_index or worker (a crashed worker's)."""
        return cls(point, weights or settings.weights_for(point.model), settings.dtype, settings.device,
                   settings.decode.temperature, settings.gpu_index, settings.worker, settings.prompts) \
            .replaced(**where)

    def replaced(self, **changes: Any) -> PointLabels:
        return dataclasses.replace(self, **changes)

    def at_batch(self, batch_size: int) -> PointLabels:
        return self.replaced(point=dataclasses.replace(self.point, batch_size=batch_size))

    def fields(self) -> dict[str, Any]:
        """The labels as PointMetrics fields (flat, as saved)."""
        point = self.point
        return {"paradigm": point.paradigm, "strategy": point.strategy, "model": point.model,
                "prompt_len": point.prompt_len, "gen_len": point.gen_len, "batch_size": point.batch_size,
                "runtime": point.runtime, "fidelity": point.fidelity, "weights": self.weights, "dtype": self.dtype,
                "device": self.device, "temperature": self.temperature, "gpu_index": self.gpu_index,
                "worker": self.worker, "prompt_source": self.prompt_source}


@dataclass(frozen=True)
class DecodeOptions:
    """Decoder knobs a user may set; each paradigm reads the ones it has."""

    block_len: int = 32  # dlm: semi-autoregressive block length
    steps: int | None = None  # dlm: total denoising steps (None: one per generated token)
    threshold: float = 0.9  # parallel strategies: commit what is more confident than this
    tpf: float | None = None  # parallel strategies: simulated tokens per forward (None: the model decides)
    subblock_len: int | None = None  # block: sub-block length (None: the model's)
    refresh_every_step: bool = False  # caching strategies: rebuild the cache at every step (a test of the plumbing)
    tpf_dispersion: float = 1.0  # simulated acceptance: variance / mean of the commits beyond the first (0: equal rows)
    temperature: float = 0.0  # 0: greedy; above: Gumbel-max sampling at this temperature
    seed: int = 0  # simulated acceptance and sampling noise
    replay: tuple[tuple[tuple[int, ...], ...], ...] | None = None  # commits per (span, step, row) of a trace


@dataclass(frozen=True)
class MemoryReport:
    """Peaks over one tracked region, in bytes (None where the reading is unavailable)."""

    peak_allocated_bytes: int | None = None  # torch.cuda.max_memory_allocated
    peak_reserved_bytes: int | None = None  # torch.cuda.max_memory_reserved
    nvml_peak_used_bytes: int | None = None  # device-wide used memory, sampled
    nvml_baseline_used_bytes: int | None = None  # device-wide used memory when tracking began
    peak_rss_bytes: int | None = None  # CPU runs: process resident set size, sampled
    state_start: dict[str, Any] | None = None  # device_state() when tracking began (CUDA)
    state_end: dict[str, Any] | None = None  # device_state() when it ended


@dataclass(frozen=True)
class EnergyReading:
    """Device-wide energy over one window (NVML's total-energy counter); null with the reason."""

    joules: float | None = None
    window_s: float | None = None
    reason: str | None = None  # why `joules` is null


def percentile(values: list[float], share: float) -> float | None:
    """The `share` quantile (0..1), linearly interpolated; None for no values."""
    import numpy

    return float(numpy.percentile(values, share * 100)) if values else None


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
    tokens_generated: int  # batch * gen_len: what tokens_per_s counts
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
    runtime: str = DEFAULT_RUNTIME  # the execution runtime (runtimes/)
    capture_s: float | None = None  # seconds spent capturing CUDA graphs, never timed (None: no capture)
    runtime_agreement: float | None = None  # share of tokens equal to the same point under the session's other runtime
    fidelity: str = DEFAULT_FIDELITY  # the per-forward work (paradigms/scoring.py)
    temperature: float = 0.0
    tpf_dispersion: float | None = None  # simulated acceptance: variance / mean of the commits beyond the first
    row_tokens_per_forward: float | None = None  # mean over rows of gen_len / the forwards that row committed in
    point_wall_s: float | None = None  # the point's whole time: start-up, capture, warm-up and rounds
    gpu_index: int | None = None  # the CUDA device the point ran on, as the session (not its worker) numbers them
    worker: str | None = None  # the pytest-xdist worker that ran it (None: one process)
    predicted_peak_bytes: int | None = None  # the analytic memory model (memory_model.py)
    measured_to_predicted: float | None = None  # peak_mem_allocated_bytes / predicted_peak_bytes
    prompt_source: str = "synthetic"
    # batch * positions decoded past the prompt (block reference: the last block whole)
    tokens_decoded: int | None = None
    tokens_per_s_counts: str = "tokens_generated"  # the count tokens_per_s divides by the latency
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
    # latency as a request feels it, over every row of every timed round
    ttft_s: float | None = None  # median time to the forward that committed a row's first token
    request_latency_p50_s: float | None = None  # to the forward that committed a row's last token
    request_latency_p90_s: float | None = None
    request_latency_p99_s: float | None = None
    # energy of the timed rounds (NVML, device-wide)
    energy_j: float | None = None
    joules_per_token: float | None = None  # energy_j / (tokens_generated * rounds)
    tokens_per_joule: float | None = None
    mean_power_w: float | None = None  # energy_j / the rounds' wall time
    energy_reason: str | None = None  # why the energy keys are null
    # roofline.py's keys and ai_paper_flop_per_element, saved flat
    roofline: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # further keys, saved flat (e.g. a boundary search)

    @classmethod
    def from_run(
        cls,
        labels: PointLabels,
        *,
        describe: dict[str, Any],
        latencies_s: list[float],
        nfe: int | None,
        forward_ms: dict[str, list[float]],
        memory: MemoryReport,
        warmup_rounds: int,
        decoded_len: int | None = None,
        token_agreement: float | None = None,
        capture_s: float | None = None,
        runtime_agreement: float | None = None,
        extra: dict[str, Any] | None = None,
        first_token_s: list[float] | None = None,
        request_latency_s: list[float] | None = None,
        energy: EnergyReading | None = None,
    ) -> PointMetrics:
        """Derive every rate from raw readings of one point; `describe` carries what the decoder
        adds to the labels (`block_size`, `steps`, acceptance, `predicted_peak_bytes`);
        `decoded_len`: positions per row the decoder filled, where more than gen_len;
        `first_token_s`, `request_latency_s`: one per row and round."""
        point = labels.point
        energy = energy or EnergyReading(reason="not measured")
        requests = request_latency_s or []
        joules = energy.joules
        spent_tokens = point.batch_size * point.gen_len * len(latencies_s)
        latency = statistics.median(latencies_s) if latencies_s else None
        predicted = describe.get("predicted_peak_bytes")
        measured = memory.peak_allocated_bytes
        tokens = point.batch_size * point.gen_len
        step_ms = step_times_ms(forward_ms)
        prefill = forward_ms.get("prefill", [])
        return cls(
            **labels.fields(),
            tokens_generated=tokens,
            tokens_decoded=point.batch_size * (decoded_len or point.gen_len),
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
            capture_s=capture_s,
            runtime_agreement=runtime_agreement,
            measured_to_predicted=measured / predicted if measured and predicted else None,
            ttft_s=statistics.median(first_token_s) if first_token_s else None,
            request_latency_p50_s=percentile(requests, 0.5),
            request_latency_p90_s=percentile(requests, 0.9),
            request_latency_p99_s=percentile(requests, 0.99),
            energy_j=joules,
            joules_per_token=joules / spent_tokens if joules and spent_tokens else None,
            tokens_per_joule=spent_tokens / joules if joules else None,
            mean_power_w=joules / energy.window_s if joules and energy.window_s else None,
            energy_reason=energy.reason,
            extra=dict(extra or {}),
            **UNDESCRIBED | describe,
        )

    @classmethod
    def failed(cls, labels: PointLabels, describe: dict[str, Any], status: str, message: str,
               memory: MemoryReport, extra: dict[str, Any] | None = None) -> PointMetrics:
        """A point that did not finish: no rates, the memory reading at the failure, the message."""
        return cls(
            **labels.fields(), tokens_generated=0, tokens_per_s=None,
            latency_s=None, nfe=None, tokens_per_forward=None, ms_per_forward=None, prefill_ms=None,
            peak_mem_allocated_bytes=memory.peak_allocated_bytes, peak_mem_reserved_bytes=memory.peak_reserved_bytes,
            nvml_peak_used_bytes=memory.nvml_peak_used_bytes, peak_rss_bytes=memory.peak_rss_bytes,
            status=status, message=message, extra=dict(extra or {}), **UNDESCRIBED | describe,
        )

    @property
    def peak_bytes(self) -> int | None:
        return self.peak_mem_allocated_bytes if self.peak_mem_allocated_bytes is not None else self.peak_rss_bytes

    def to_extra_info(self) -> dict[str, Any]:
        """The flat, strict-JSON record: a non-finite number (a rate over a zero time) is null."""
        info = dataclasses.asdict(self)
        roofline, extra = info.pop("roofline"), info.pop("extra")
        return {key: _strict(value) for key, value in (info | roofline | extra).items()}

    @classmethod
    def from_extra_info(cls, info: dict[str, Any], roofline_keys: tuple[str, ...]) -> PointMetrics:
        """The record `to_extra_info` saved (e.g. sent by a worker process); keys that are neither
        fields nor `roofline_keys` go back to `extra`."""
        names = {f.name for f in dataclasses.fields(cls)} - {"roofline", "extra"}
        return cls(**{key: _tuples(value) for key, value in info.items() if key in names},
                   roofline={key: info[key] for key in roofline_keys if key in info},
                   extra={key: value for key, value in info.items() if key not in names and key not in roofline_keys})


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


@dataclass(frozen=True)
class Settings:
    """Every --dlm-* choice, validated; "auto" values stay until `resolved()`."""

    grid: str = "auto"
    paradigms: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    prompt_lens: tuple[int, ...] | None = None
    gen_lens: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    rounds: int = DEFAULT_ROUNDS
    max_rounds: int = DEFAULT_MAX_ROUNDS
    warmup: int = 1
    max_time_s: float = 60.0
    dtype: str = "auto"
    device: str = "auto"
    checkpoints: tuple[tuple[str, str], ...] = ()
    prompts: str = "synthetic"
    dataset: str | None = None
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    strategies: tuple[str, ...] | None = None
    runtimes: tuple[str, ...] = (DEFAULT_RUNTIME,)
    fidelities: tuple[str, ...] = (DEFAULT_FIDELITY,)
    acceptance_trace: str | None = None  # real weights: write commits there; random weights: replay them
    tpf: float | None = None  # None: simulated only where the weights are random
    boundary: bool = False
    max_batch: int = 1024
    isolate: str = "auto"
    memory_limit_gib: float | None = None
    peak_tflops: float | None = None
    peak_gbps: float | None = None
    measure_ceilings: bool = False
    gate: tuple[str, ...] = ()  # METRIC:THRESHOLD rules, checked when parsed (gate.GateRule)
    baseline: str | None = None
    journal: str | None = None
    allow_mismatch: bool = False
    seed: int = 0
    devices: tuple[int, ...] | str | None = None  # --dlm-devices: "all" or CUDA indices, one pytest-xdist worker each
    shard: tuple[int, int] | None = None  # --dlm-shard=I/N: (I, N), this run's slice of the selection
    gpu_index: int | None = None  # where this process runs: the CUDA device as the session numbers it
    worker: str | None = None  # the pytest-xdist worker this process is (None: one process)

    def to_json(self) -> str:
        """Every field, for a probe process (`from_json` rebuilds the same Settings)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        fields = {name: _tuples(value) for name, value in json.loads(text).items()}
        decode = {name: _tuples(value) for name, value in fields["decode"].items()}
        return cls(**fields | {"decode": DecodeOptions(**decode)})

    def checkpoint(self, model: str) -> str | None:
        return dict(self.checkpoints).get(model)

    def weights_for(self, model: str) -> str:
        """The weights label of a built-in model: "checkpoint" where --dlm-checkpoint gives one."""
        return "checkpoint" if self.checkpoint(model) else "random"

    @property
    def isolate_probes(self) -> bool:
        return self.isolate == "on" or (self.isolate == "auto" and self.device.startswith("cuda"))

    def decode_for(self, weights: str) -> DecodeOptions:
        """Decoder options for a model with these weights: random weights cannot decide acceptance,
        so their parallel strategies commit a simulated number of tokens per forward."""
        tpf = self.tpf if self.tpf is not None or weights != "random" else DEFAULT_SIMULATED_TPF
        return dataclasses.replace(self.decode, tpf=tpf, seed=self.seed)

    def resolved(self) -> Settings:
        """Concrete device, dtype and grid for this machine (imports torch)."""
        import torch

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError(f"--dlm-device={device}: CUDA is not available on this machine")
            index = int(device.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise ValueError(f"--dlm-device={device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        dtype = self.dtype if self.dtype != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
        grid = self.grid if self.grid != "auto" else ("standard" if device.startswith("cuda") else "smoke")
        gpu_index = self.gpu_index
        if gpu_index is None and device.startswith("cuda"):
            gpu_index = int(device.partition(":")[2] or torch.cuda.current_device())
        return dataclasses.replace(self, device=device, dtype=dtype, grid=grid, gpu_index=gpu_index)

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, DTYPES[self.dtype])


def _strict(value: Any) -> Any:
    """`value` as strict JSON holds it: tuples as lists, inf and nan as None."""
    if isinstance(value, (tuple, list)):
        return [_strict(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples Settings holds."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value
