"""What every decoding paradigm shares: its Protocol, its result, forward accounting, a registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from pytest_dlmbench.core import DecodeOptions
from pytest_dlmbench.paradigms.acceptance import Acceptance, TargetTPF, Threshold
from pytest_dlmbench.timing import RegionTimer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from pytest_dlmbench.memory_model import Phase

    from pytest_dlmbench.models import ModelSpec


class DecodeError(ValueError):
    """A generation request the paradigm cannot run as asked."""


def parallel_acceptance(options: DecodeOptions) -> Acceptance:
    """The commit rule of the parallel strategies: a simulated TPF target, or the model's confidences."""
    return TargetTPF(options.tpf) if options.tpf is not None else Threshold(options.threshold)


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


@dataclass(frozen=True)
class GenerationResult:
    """What one generation produced and how many forwards it took."""

    tokens: torch.Tensor  # (batch, gen_len) generated ids, prompt excluded
    nfe: int  # model forward passes, prefill included
    forward_ms: dict[str, list[float]] = field(default_factory=dict)  # per forward kind
    shapes: tuple[ForwardShape, ...] = ()  # every forward, in order


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

    @contextmanager
    def forward(self, kind: str, tokens: int, context: int, logits: int, attention: str = "full",
                kv_written: int = 0) -> Iterator[None]:
        """Wrap one model forward of `kind` ("prefill", "decode", "step", "refresh", "commit") and
        record its shape (per sequence; see ForwardShape)."""
        with self.timer.region(kind):
            yield
        self.shapes.append(ForwardShape(kind, tokens, context, logits, attention, kv_written))
        self.nfe += 1
        if self.progress is not None:
            self.progress(self.nfe)
        if self.limit is not None and self.nfe >= self.limit:
            raise ForwardLimitReached

    def result(self, tokens: torch.Tensor) -> GenerationResult:
        return GenerationResult(tokens=tokens, nfe=self.nfe, forward_ms=self.timer.read(), shapes=tuple(self.shapes))


class Paradigm(Protocol):
    """A decoding algorithm: validates a request, then generates exactly `gen_len` tokens."""

    name: ClassVar[str]
    strategies: ClassVar[tuple[str, ...]]  # the first is the baseline

    def validate(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch_size: int) -> None: ...

    def describe(self, spec: ModelSpec, gen_len: int) -> dict[str, Any]:
        """extra_info labels: `block_size`, `steps`, `acceptance`, `threshold`, `tpf_target`."""
        ...

    def generate(
        self, model: PreTrainedModel, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog
    ) -> GenerationResult: ...

    def memory_phases(self, spec: ModelSpec, prompt_len: int, gen_len: int) -> list[Phase]:
        """The generation's stages for the analytic memory model (see memory_model.py)."""
        ...

    def paper_arithmetic_intensity(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch: int) -> float | None:
        """The first seed paper's Appendix A closed form (eqs. 11-13), L = prompt + gen; None for
        caching strategies, which the closed forms do not describe."""
        ...

    def probe(self, model: PreTrainedModel, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog) -> None:
        """Reach the generation's peak memory as cheaply as the algorithm allows (OOM probes)."""
        ...


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


P = TypeVar("P", bound=type)
PARADIGMS: dict[str, type] = {}


def register(cls: P) -> P:
    """Class decorator: make a paradigm available under its `name`."""
    PARADIGMS[cls.name] = cls
    return cls


def make_paradigm(name: str, options: DecodeOptions, strategy: str = "baseline") -> Paradigm:
    """An instance of the paradigm registered as `name`, running `strategy`, configured from `options`."""
    try:
        cls = PARADIGMS[name]
    except KeyError:
        raise DecodeError(f"unknown paradigm {name!r}; known paradigms: {', '.join(PARADIGMS)}") from None
    if strategy not in cls.strategies:
        raise DecodeError(f"paradigm {name} has no strategy {strategy!r}; it has: {', '.join(cls.strategies)}")
    return cls.from_options(options, strategy)


def labels(acceptance: Acceptance, **extra: Any) -> dict[str, Any]:
    """The acceptance part of `describe()`."""
    return {
        "acceptance": acceptance.label,
        "threshold": acceptance.threshold,
        "tpf_target": getattr(acceptance, "tpf", None),
        **extra,
    }

