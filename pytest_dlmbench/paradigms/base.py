"""What every decoding paradigm shares: its Protocol, its result, forward accounting, a registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from pytest_dlmbench.timing import RegionTimer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from pytest_dlmbench.models import ModelSpec


class DecodeError(ValueError):
    """A generation request the paradigm cannot run as asked."""


@dataclass(frozen=True)
class DecodeOptions:
    """Decoder knobs a user may set; each paradigm reads the ones it has."""

    block_len: int = 32  # dlm: semi-autoregressive block length
    steps: int | None = None  # dlm: total denoising steps (None: one per generated token)


@dataclass(frozen=True)
class GenerationResult:
    """What one generation produced and how many forwards it took."""

    tokens: torch.Tensor  # (batch, gen_len) generated ids, prompt excluded
    nfe: int  # model forward passes, prefill included
    forward_ms: dict[str, list[float]] = field(default_factory=dict)  # per forward kind


@dataclass
class ForwardLog:
    """Counts and times each model forward of a generation; reports progress after each."""

    timer: RegionTimer
    progress: Callable[[int], None] | None = None
    nfe: int = 0

    @contextmanager
    def forward(self, kind: str) -> Iterator[None]:
        """Wrap one model forward; `kind` is e.g. "prefill", "decode", "step", "commit"."""
        with self.timer.region(kind):
            yield
        self.nfe += 1
        if self.progress is not None:
            self.progress(self.nfe)

    def result(self, tokens: torch.Tensor) -> GenerationResult:
        return GenerationResult(tokens=tokens, nfe=self.nfe, forward_ms=self.timer.read())


class Paradigm(Protocol):
    """A decoding algorithm: validates a request, then generates exactly `gen_len` tokens."""

    name: ClassVar[str]

    def validate(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch_size: int) -> None: ...

    def describe(self, spec: ModelSpec, gen_len: int) -> dict[str, int | None]:
        """The `block_size` and `steps` this decoder uses for `gen_len` (None where it has none)."""
        ...

    def generate(
        self, model: PreTrainedModel, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog
    ) -> GenerationResult: ...


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


def make_paradigm(name: str, options: DecodeOptions) -> Paradigm:
    """An instance of the paradigm registered as `name`, configured from `options`."""
    try:
        cls = PARADIGMS[name]
    except KeyError:
        raise DecodeError(f"unknown paradigm {name!r}; known paradigms: {', '.join(PARADIGMS)}") from None
    return cls.from_options(options)


def greedy_confidence(logits: torch.Tensor, mask_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy prediction and its softmax probability per position; the mask token is never predicted.

    logits: (batch, positions, vocab) -> confidence (batch, positions) float32, tokens (batch, positions).
    """
    import torch

    logits = logits.float()
    logits[..., mask_token_id] = -torch.inf  # committing a mask would leave the answer unfinished
    probs = torch.softmax(logits, dim=-1)
    confidence, tokens = probs.max(dim=-1)
    return confidence, tokens
