"""How many masked positions one diffusion forward commits.

Three rules: a fixed per-step schedule (LLaDA's baseline), a confidence threshold acting on the
model's real confidences (Fast-dLLM parallel decoding), and a simulated tokens-per-forward
target for random weights, whose confidences say nothing. A forward costs the same whichever
tokens it commits, so throughput as a function of tokens-per-forward is exact under simulation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


def linear_schedule(masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of `steps` steps: masked // steps each, the remainder first."""
    base, remainder = divmod(masked, steps)
    return [base + (1 if step < remainder else 0) for step in range(steps)]


class Acceptance(Protocol):
    """Yields, for each forward over a span of `masked` masked positions, how many to commit;
    None means: every position above `threshold`, plus the most confident one."""

    label: str  # recorded as extra_info["acceptance"]
    threshold: float | None

    def counts(self, masked: int) -> Iterator[int | None]: ...


@dataclass(frozen=True)
class Schedule:
    steps: int
    label: str = "fixed"
    threshold: float | None = None

    def counts(self, masked: int) -> Iterator[int | None]:
        return iter(linear_schedule(masked, self.steps))


@dataclass(frozen=True)
class Threshold:
    threshold: float
    label: str = "model"

    def counts(self, masked: int) -> Iterator[int | None]:
        return itertools.repeat(None)


@dataclass(frozen=True)
class TargetTPF:
    """k_i = floor((i + 1) * tpf) - floor(i * tpf): the running mean of commits is `tpf`."""

    tpf: float
    label: str = "simulated"
    threshold: float | None = None

    def counts(self, masked: int) -> Iterator[int | None]:
        return (math.floor((i + 1) * self.tpf) - math.floor(i * self.tpf) for i in itertools.count())


def choose(confidence: torch.Tensor, count: int | None, threshold: float | None) -> torch.Tensor:
    """Which positions to commit. confidence: (batch, n), -inf where nothing is masked."""
    import torch

    masked = torch.isfinite(confidence)
    if count is None:  # above the threshold, and always each row's most confident one
        chosen = confidence > threshold
        chosen.scatter_(1, confidence.argmax(dim=-1, keepdim=True), True)
        return chosen & masked
    count = min(count, int(masked.sum(dim=1).min()))
    chosen = torch.zeros_like(masked)
    chosen.scatter_(1, confidence.topk(count, dim=-1).indices, True)  # the `count` most confident
    return chosen


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


def commit(x_span: torch.Tensor, logits: torch.Tensor, mask_token_id: int, count: int | None,
           threshold: float | None) -> torch.Tensor:
    """The span with the chosen masked positions replaced by their greedy tokens.

    x_span: (batch, n) ids; logits: (batch, n, vocab), aligned to the span's positions.
    """
    import torch

    confidence, predicted = greedy_confidence(logits, mask_token_id)
    confidence = torch.where(x_span == mask_token_id, confidence, -torch.inf)
    return torch.where(choose(confidence, count, threshold), predicted, x_span)
