"""What every decoding paradigm shares: its Protocol, its result, forward accounting, a registry."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from pytest_dlmbench.core import DEFAULT_FIDELITY, BenchPoint, DecodeOptions, Settings
from pytest_dlmbench.models import MODEL_SPECS, get_spec
from pytest_dlmbench.paradigms.acceptance import Acceptance, Replay, RowTPF, TargetTPF, Threshold
from pytest_dlmbench.timing import RegionTimer
from pytest_dlmbench.trace import read_commits

if TYPE_CHECKING:
    import torch

    from pytest_dlmbench.memory_model import Phase
    from pytest_dlmbench.models import ModelSpec
    from pytest_dlmbench.runtimes import Runtime


class DecodeError(ValueError):
    """A generation request the paradigm cannot run as asked."""


def parallel_acceptance(options: DecodeOptions) -> Acceptance:
    """The commit rule of the parallel strategies: a replayed trace, a simulated TPF (equal rows at
    dispersion 0, else drawn per row), or the model's confidences."""
    if options.replay is not None:
        return Replay(options.replay)
    if options.tpf is None:
        return Threshold(options.threshold)
    if options.tpf_dispersion == 0:
        return TargetTPF(options.tpf)
    return RowTPF(options.tpf, options.tpf_dispersion, options.seed)


FORWARD_KINDS = ("prefill", "decode", "step", "refresh", "commit")


@dataclass(frozen=True)
class ForwardShape:
    """What one forward computed, per sequence: the input of the analytic roofline (roofline.py)."""

    kind: str  # one of FORWARD_KINDS
    tokens: int  # positions forwarded (queries)
    context: int  # positions attended to (cached + forwarded)
    logits: int  # positions whose logits were computed
    attention: str = "full"  # "full" (bidirectional), "causal" (queries last) or "block_causal"
    kv_written: int = 0  # positions whose KV this forward wrote into a cache
    in_place: bool = False  # the KV written replaced slots the cache holds (no cache grows by concatenation)
    softmax_rows: int = 0  # positions whose logits the scoring after the forward took a softmax over
    softmax_bytes: int = 0  # bytes that scoring moved per softmax row and vocab entry


@dataclass(frozen=True)
class GenerationResult:
    """What one generation produced and how many forwards it took."""

    tokens: torch.Tensor  # (batch, gen_len) generated ids, prompt excluded
    nfe: int  # model forward passes, prefill included
    forward_ms: dict[str, list[float]] = field(default_factory=dict)  # per forward kind
    shapes: tuple[ForwardShape, ...] = ()  # every forward, in order
    commits: tuple[tuple[tuple[int, ...], ...], ...] = ()  # per (span, step, row): positions committed
    row_nfe: tuple[int, ...] = ()  # per row: the forwards it needed (nfe minus its steps that committed nothing)
    decoded_len: int | None = None  # per row: positions decoded past the prompt, where more than gen_len
    # per row, ms from the generation's start to the end of the forward that committed its first
    # (last) token; empty where no forward was logged
    first_token_ms: tuple[float, ...] = ()
    last_token_ms: tuple[float, ...] = ()


class ForwardLimitReached(Exception):
    """A generation stopped on purpose after `ForwardLog.limit` forwards (memory probes)."""


@dataclass
class ForwardLog:
    """Counts and times each model forward of a generation; reports progress after each."""

    timer: RegionTimer
    progress: Callable[[int], None] | None = None
    nfe: int = 0
    limit: int | None = None  # stop the generation after this many forwards
    shapes: list[ForwardShape] = field(default_factory=list)
    steps: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (span, commits per row) per step
    step_forwards: list[int] = field(default_factory=list)  # per step: the index of the forward it committed from

    def committed(self, span: int, per_row: torch.Tensor, softmax_rows: int, softmax_bytes: int) -> None:
        """Record a step's commits per row, (batch,) on the device (read once, at the end), and what
        scoring the last forward's logits moved."""
        self.steps.append((span, per_row))
        self.step_forwards.append(self.nfe - 1)
        self.shapes[-1] = dataclasses.replace(self.shapes[-1], softmax_rows=softmax_rows, softmax_bytes=softmax_bytes)

    @contextmanager
    def forward(self, kind: str, tokens: int, context: int, logits: int, attention: str = "full",
                kv_written: int = 0, in_place: bool = False) -> Iterator[None]:
        """Wrap one model forward of `kind` ("prefill", "decode", "step", "refresh", "commit") and
        record its shape (per sequence; see ForwardShape)."""
        with self.timer.region(kind):
            yield
        self.shapes.append(ForwardShape(kind, tokens, context, logits, attention, kv_written, in_place))
        self.nfe += 1
        if self.progress is not None:
            self.progress(self.nfe)
        if self.limit is not None and self.nfe >= self.limit:
            raise ForwardLimitReached

    def result(self, tokens: torch.Tensor, decoded_len: int | None = None) -> GenerationResult:
        """`tokens` (batch, gen_len); `decoded_len`: the positions per row the decoder filled, where
        it decoded past gen_len (a padded last block)."""
        import torch

        batch = tokens.shape[0]
        commits: dict[int, list[tuple[int, ...]]] = {}
        idle = [0] * batch  # per row: steps that committed nothing
        ends = self.timer.ends_ms()  # (nfe,) when each forward ended
        # without logged commits, each forward commits a token of every row (autoregressive)
        first, last = ([ends[0]] * batch, [ends[-1]] * batch) if ends else ([], [])
        if self.steps:
            per_step = torch.stack([per_row for _, per_row in self.steps])  # (steps, batch)
            idle = (per_step == 0).sum(dim=0).tolist()
            for (span, _), row_counts in zip(self.steps, per_step.tolist()):
                commits.setdefault(span, []).append(tuple(row_counts))
            first, last = commit_times(per_step.cpu() > 0, self.step_forwards, ends)
        spans = tuple(tuple(commits.get(span, ())) for span in range(max(commits, default=-1) + 1))
        return GenerationResult(tokens=tokens, nfe=self.nfe, forward_ms=self.timer.read(), shapes=tuple(self.shapes),
                                commits=spans, row_nfe=tuple(self.nfe - count for count in idle),
                                decoded_len=decoded_len, first_token_ms=tuple(first), last_token_ms=tuple(last))


def commit_times(committing: torch.Tensor, step_forwards: list[int],
                 ends_ms: list[float]) -> tuple[list[float], list[float]]:
    """Per row, when the forward of its first and of its last committing step ended (ms; NaN for a
    row that committed nothing); `committing` (steps, batch) is True where the step committed a
    token of the row."""
    import torch

    steps = committing.shape[0]
    order = torch.arange(steps).unsqueeze(1)  # (steps, 1)
    first = torch.where(committing, order, steps).min(dim=0).values.tolist()  # (batch,) step index
    last = torch.where(committing, order, -1).max(dim=0).values.tolist()
    at = [ends_ms[forward] for forward in step_forwards] + [math.nan]  # (steps + 1,) ms; [steps] and [-1]: none
    return [at[step] for step in first], [at[step] for step in last]


class Paradigm(Protocol):
    """A decoding algorithm: validates a request, then generates exactly `gen_len` tokens. Its
    class also has `from_options(options, strategy, fidelity)`, which `make_paradigm` calls, and
    may declare `runtimes`, the runtimes it runs on (default: every one)."""

    name: ClassVar[str]
    strategies: ClassVar[tuple[str, ...]]  # the first is the baseline
    paper_equation: ClassVar[str]  # the seed paper's Appendix A equation of its arithmetic intensity

    @classmethod
    def from_options(cls, options: DecodeOptions, strategy: str = ..., fidelity: str = ...) -> Paradigm: ...

    def validate(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch_size: int) -> None: ...

    def describe(self, spec: ModelSpec, gen_len: int) -> dict[str, Any]:
        """extra_info labels: `block_size`, `steps`, `acceptance`, `threshold`, `tpf_target`."""
        ...

    def generate(
        self, runtime: Runtime, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog
    ) -> GenerationResult: ...

    def memory_phases(self, spec: ModelSpec, prompt_len: int, gen_len: int) -> list[Phase]:
        """The generation's stages for the analytic memory model (see memory_model.py)."""
        ...

    def paper_arithmetic_intensity(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch: int) -> float | None:
        """The first seed paper's Appendix A closed form (eqs. 11-13), L = prompt + gen; None for
        caching strategies, which the closed forms do not describe."""
        ...

    def probe(self, runtime: Runtime, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog) -> None:
        """Reach the generation's peak memory as cheaply as the algorithm allows (OOM probes)."""
        ...

    def fixed_shapes(self, spec: ModelSpec, gen_len: int) -> bool:
        """Whether the forwards' count and shapes follow from the request alone, never from the
        logits: then a capture run may skip the forwards it has captured already."""
        ...


def call_user_generate(generate: Callable[..., Any], prompt_ids: torch.Tensor, log: ForwardLog) -> Any:
    """A user's `generate(prompt_ids)`, or `generate(prompt_ids, log)` where it takes the forward log."""
    import inspect

    return generate(prompt_ids, log) if len(inspect.signature(generate).parameters) >= 2 else generate(prompt_ids)


def user_vocab(model: str, vocab_size: int | None) -> int:
    """The prompt ids' vocabulary of a user's generate: given, or the registered model's."""
    spec = MODEL_SPECS.get(model)
    if vocab_size is None and spec is None:
        raise DecodeError(f"generate=fn on {model!r}, no registered model: pass vocab_size= for the prompt ids")
    return vocab_size or spec.prompt_vocab_limit  # type: ignore[union-attr]


def validate_lengths(spec: ModelSpec, prompt_len: int, gen_len: int, batch_size: int) -> None:
    """Checks every paradigm shares: positive sizes that fit the model's positions."""
    for label, value in (("prompt_len", prompt_len), ("gen_len", gen_len), ("batch_size", batch_size)):
        if value <= 0:
            raise DecodeError(f"{label}={value} must be a positive integer")
    if prompt_len + gen_len > spec.max_positions:
        raise DecodeError(
            f"prompt_len + gen_len = {prompt_len + gen_len} exceeds {spec.name}'s "
            f"{spec.max_positions} positions"
        )


P = TypeVar("P", bound="type[Paradigm]")
PARADIGMS: dict[str, type[Paradigm]] = {}
# A strategy added to a paradigm from outside its module: (options, fidelity) -> the configured decoder.
StrategyBuilder = Callable[[DecodeOptions, str], Paradigm]
ADDED_STRATEGIES: dict[tuple[str, str], StrategyBuilder] = {}  # (paradigm, strategy) -> builder


def register(cls: P) -> P:
    """Class decorator: make a paradigm available under its `name`."""
    PARADIGMS[cls.name] = cls
    return cls


def add_strategy(paradigm: str, name: str, build: StrategyBuilder) -> None:
    """Make `name` a strategy of `paradigm`, built by `build(options, fidelity)`."""
    if paradigm not in PARADIGMS:
        raise DecodeError(f"strategy {name!r}: unknown paradigm {paradigm!r}; known paradigms: {', '.join(PARADIGMS)}")
    if name in PARADIGMS[paradigm].strategies:
        raise DecodeError(f"strategy {name!r} is one of paradigm {paradigm}'s own; choose another name")
    ADDED_STRATEGIES[paradigm, name] = build


def strategies_of(paradigm: str) -> tuple[str, ...]:
    """The paradigm's strategies, read live: its own (the baseline first), then the added ones."""
    return (*PARADIGMS[paradigm].strategies, *(name for owner, name in ADDED_STRATEGIES if owner == paradigm))


def strategy_names() -> tuple[str, ...]:
    """Every strategy of every paradigm, each once, in the paradigms' order."""
    return tuple(dict.fromkeys(name for paradigm in PARADIGMS for name in strategies_of(paradigm)))


def supported_runtimes(paradigm: str) -> tuple[str, ...] | None:
    """The runtimes a paradigm declares it runs on (`runtimes` on its class); None: every runtime."""
    return getattr(PARADIGMS[paradigm], "runtimes", None)


def make_paradigm(name: str, options: DecodeOptions, strategy: str = "baseline",
                  fidelity: str = DEFAULT_FIDELITY) -> Paradigm:
    """An instance of the paradigm registered as `name`, running `strategy` at `fidelity`,
    configured from `options`."""
    try:
        cls = PARADIGMS[name]
    except KeyError:
        raise DecodeError(f"unknown paradigm {name!r}; known paradigms: {', '.join(PARADIGMS)}") from None
    if (name, strategy) in ADDED_STRATEGIES:
        return ADDED_STRATEGIES[name, strategy](options, fidelity)
    if strategy not in cls.strategies:
        raise DecodeError(f"paradigm {name} has no strategy {strategy!r}; it has: {', '.join(strategies_of(name))}")
    return cls.from_options(options, strategy, fidelity)


def paradigm_for(point: BenchPoint, settings: Settings, weights: str, strategy: str | None = None) -> Paradigm:
    """The decoder of `point` (or of its `strategy`) for a model with these weights. Random weights
    cannot decide acceptance: their parallel strategies replay --dlm-acceptance-trace if given,
    else commit a simulated number of tokens per forward."""
    options = settings.decode_for(weights)
    paradigm = make_paradigm(point.paradigm, options, strategy or point.strategy, point.fidelity)
    if settings.acceptance_trace is None or weights != "random" or \
            paradigm.describe(get_spec(point.model), point.gen_len).get("acceptance") != "simulated":
        return paradigm
    replay = dataclasses.replace(options, replay=read_commits(settings.acceptance_trace, point))
    return make_paradigm(point.paradigm, replay, strategy or point.strategy, point.fidelity)


def labels(acceptance: Acceptance, **extra: Any) -> dict[str, Any]:
    """The acceptance part of `describe()`."""
    return {
        "acceptance": acceptance.label,
        "threshold": acceptance.threshold,
        "tpf_target": getattr(acceptance, "tpf", None),
        "tpf_dispersion": getattr(acceptance, "dispersion", None),
        **extra,
    }

