"""How many masked positions one diffusion forward commits, per sequence of the batch.

Four rules: a fixed per-step schedule (LLaDA's baseline), a confidence threshold acting on the
model's real confidences (Fast-dLLM parallel decoding), a simulated tokens-per-forward target
for random weights, whose confidences say nothing, and the replay of commits a real checkpoint
made (an acceptance trace). A forward costs the same whichever tokens it commits, so throughput
as a function of tokens-per-forward is exact under simulation. Real acceptance differs per
sequence and a batch forwards until its slowest row is done, so the simulation draws each row's
commits: 1 + a count with mean tpf - 1 and variance `dispersion` x that mean (0: every row the
running mean, 1: Poisson, above: negative binomial), seeded per span. Every rule but the model's
confidences fixes a span's forward count before it runs (`steps`), so the span's loop need not
read the device to know it is done.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pytest_dlmbench.device import host_to_device
from pytest_dlmbench.paradigms.scoring import Scoring, confidence

if TYPE_CHECKING:
    import torch

# Commits of one step: the same count for every row, one per row, or None (the threshold decides).
Count = int | tuple[int, ...] | None


def linear_schedule(masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of `steps` steps: masked // steps each, the remainder first."""
    base, remainder = divmod(masked, steps)
    return [base + (1 if step < remainder else 0) for step in range(steps)]


class Acceptance(Protocol):
    """Yields, for each forward over the `span`-th span (of a generation) of `masked` masked
    positions, how many to commit; None means: the rule reads the model's confidences and
    `select`s the positions itself (Threshold: every one above `threshold`, plus the most
    confident one). A rule of one's own (api.py) implements the same three members."""

    @property
    def label(self) -> str:
        """Recorded as extra_info["acceptance"]."""
        ...

    @property
    def threshold(self) -> float | None: ...

    def counts(self, masked: int, span: int, batch: int) -> Iterator[Count]: ...

    def steps(self, masked: int, span: int, batch: int) -> int | None:
        """Forwards until every row has committed its `masked` positions of the span, where the
        rule alone decides; None (whatever the arguments) where the model's confidences do."""
        ...

    def select(self, confidence: torch.Tensor) -> torch.Tensor:
        """Where `counts` yields None: the positions to commit, (batch, n) bool, from the
        confidences (batch, n) of the masked positions (-inf elsewhere). At least one a row, or
        the span never ends."""
        ...


class Counted:
    """A rule whose commits never depend on the logits: its forwards per span are known up front."""

    def select(self, confidence: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} yields counts; it never selects from confidences")

    def counts(self, masked: int, span: int, batch: int) -> Iterator[Count]:
        raise NotImplementedError

    def steps(self, masked: int, span: int, batch: int) -> int | None:
        """Forwards until the commits `counts` yields have used up `masked` positions in every row."""
        counts, left, steps = self.counts(masked, span, batch), [masked] * batch, 0
        while any(left):
            count = next(counts)
            assert count is not None, "a counted rule always yields counts"
            per_row = count if isinstance(count, tuple) else (count,) * batch
            left = [max(0, row_left - row_count) for row_left, row_count in zip(left, per_row)]
            steps += 1
        return steps


def unfinished(step: int, steps: int | None, span_ids: torch.Tensor, mask_token_id: int) -> bool:
    """Does the span (batch, n) need another forward? Counted where the rule fixes its `steps` (the
    host runs ahead of the device); else by looking for a mask, one device synchronisation a step."""
    return step < steps if steps is not None else bool((span_ids == mask_token_id).any())


@dataclass(frozen=True)
class Schedule(Counted):
    step_count: int  # forwards per span
    label: str = "fixed"
    threshold: float | None = None

    def counts(self, masked: int, span: int, batch: int) -> Iterator[Count]:
        return iter(linear_schedule(masked, self.step_count))


@dataclass(frozen=True)
class Threshold:
    threshold: float
    label: str = "model"

    def counts(self, masked: int, span: int, batch: int) -> Iterator[Count]:
        return itertools.repeat(None)

    def steps(self, masked: int, span: int, batch: int) -> int | None:
        """At 1.0 or above no probability passes, so each forward commits exactly its argmax."""
        return masked if self.threshold >= 1.0 else None

    def select(self, confidence: torch.Tensor) -> torch.Tensor:
        """Above the threshold, and always each row's most confident one."""
        chosen = confidence > self.threshold
        return chosen.scatter_(1, confidence.argmax(dim=-1, keepdim=True), True)


@dataclass(frozen=True)
class TargetTPF(Counted):
    """Every row commits k_i = floor((i + 1) * tpf) - floor(i * tpf): the running mean is `tpf`."""

    tpf: float
    label: str = "simulated"
    threshold: float | None = None
    dispersion: float = 0.0

    def counts(self, masked: int, span: int, batch: int) -> Iterator[Count]:
        return (math.floor((i + 1) * self.tpf) - math.floor(i * self.tpf) for i in itertools.count())


@dataclass(frozen=True)
class RowTPF(Counted):
    """Each row commits 1 + a draw of mean tpf - 1 and variance dispersion x (tpf - 1) per step;
    the draws depend only on (seed, span), so every generation of a point commits alike."""

    tpf: float
    dispersion: float = 1.0  # 1: Poisson; above 1: negative binomial (gamma-mixed Poisson)
    seed: int = 0
    label: str = "simulated"
    threshold: float | None = None

    def counts(self, masked: int, span: int, batch: int) -> Iterator[Count]:
        rng = random.Random(f"{self.seed}/{span}")
        mean = self.tpf - 1
        while True:
            rates = [mean if self.dispersion == 1 or mean == 0 else
                     rng.gammavariate(mean / (self.dispersion - 1), self.dispersion - 1) for _ in range(batch)]
            yield tuple(1 + poisson(rng, rate) for rate in rates)


def poisson(rng: random.Random, rate: float) -> int:
    """A Poisson draw by counting uniform products (Knuth; rates here are a few tokens)."""
    limit, count, product = math.exp(-rate), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


@dataclass(frozen=True)
class Replay(Counted):
    """The commits a real checkpoint made, per (span, step, row); a span longer than its trace
    commits everything left at its next step."""

    commits: tuple[tuple[tuple[int, ...], ...], ...]
    label: str = "trace"
    threshold: float | None = None

    def counts(self, masked: int, span: int, batch: int) -> Iterator[Count]:
        steps = self.commits[span] if span < len(self.commits) else ()
        for step in steps:
            if len(step) != batch:
                raise ValueError(f"the acceptance trace has {len(step)} rows per step; this batch has {batch}")
            yield tuple(step)
        yield from itertools.repeat((masked,) * batch)


def choose(confidence: torch.Tensor, count: Count, rule: Acceptance) -> torch.Tensor:
    """Which positions to commit. confidence: (batch, n), -inf where nothing is masked."""
    import torch

    masked = torch.isfinite(confidence)
    if count is None:  # the rule reads the confidences
        return rule.select(confidence) & masked
    if isinstance(count, tuple):  # each row its own count of its most confident masked positions
        order = confidence.argsort(dim=-1, descending=True, stable=True)  # (batch, n)
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                                 .expand_as(order).contiguous())
        return (ranks < host_to_device(count, ranks.device)[:, None]) & masked
    chosen = torch.zeros_like(masked)
    # the `count` most confident; where fewer are masked, the unmasked (-inf) ones fall out
    chosen.scatter_(1, confidence.topk(min(count, masked.shape[1]), dim=-1).indices, True)
    return chosen & masked


def commit(x_span: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor | None, mask_token_id: int, count: Count,
           rule: Acceptance, scoring: Scoring, generator: torch.Generator | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The span with the chosen masked positions replaced by their predicted tokens, and the
    commits per row. x_span: (batch, n) ids; logits: (batch, computed, vocab), whose `rows` are
    the span's positions (None: all, in order)."""
    import torch

    scores, predicted = confidence(logits, rows, mask_token_id, scoring, generator)
    scores = torch.where(x_span == mask_token_id, scores, -torch.inf)
    chosen = choose(scores, count, rule)
    return torch.where(chosen, predicted, x_span), chosen.sum(dim=1)
