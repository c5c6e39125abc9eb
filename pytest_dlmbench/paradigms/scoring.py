"""How a diffusion forward's logits become confidences and predicted tokens, at a given fidelity.

Both fidelities decode the same tokens (greedy); they differ in the work and memory per forward:
- `lean` computes logits only at the positions it scores and scores them in float32;
- `reference` does what the published code does: logits at every forwarded position (LLaDA and
  Fast-dLLM v1 forwards, Fast-dLLM v2 block forwards and prefill), scored in the published
  softmax dtype over the published rows (Fast-dLLM v1: float64 over every computed position;
  v2: the logits' dtype over the sub-block), and Fast-dLLM v2's last block padded to a whole block.
With a temperature, the prediction is Gumbel-max sampled: `reference` builds the noise as the
published `add_gumbel_noise` does (float64: the logits, the uniform noise, its transform and the
quotient alive at once), `lean` adds float32 Gumbel noise to the scored rows' logits.

One deliberate departure from the published code, in both: the mask token is never predicted
(the published loops can commit [MASK] and then never finish a block), so it is left out of the
softmax too, and confidences are those of the tokens that can be committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pytest_dlmbench.core import FIDELITY_NAMES

if TYPE_CHECKING:
    import torch

    from pytest_dlmbench.runtimes.base import KVCache, Runtime

Scored = TypeVar("Scored", "torch.Tensor", int)  # the scored rows: indices, or k for the last k


@dataclass(frozen=True)
class Scoring:
    """One paradigm's scoring at one fidelity."""

    fidelity: str  # one of FIDELITY_NAMES
    all_logits: bool  # logits at every forwarded position (else only at the scored ones)
    softmax_dtype: str  # "float64", "float32" or "logits" (the model's dtype)
    softmax_all: bool = False  # the softmax runs over every computed row, then the scored ones are taken
    pad_last_block: bool = False  # block diffusion: the last block is decoded whole, beyond gen_len
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if self.fidelity not in FIDELITY_NAMES:
            raise ValueError(f"fidelity={self.fidelity!r}; allowed: {', '.join(FIDELITY_NAMES)}")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")

    def logit_rows(self, forwarded: int, scored: int) -> int:
        """How many positions' logits a forward of `forwarded` positions computes, `scored` being needed."""
        return forwarded if self.all_logits else scored

    def forward(self, runtime: Runtime, ids: torch.Tensor, start: int, scored: Scored,
                cache: KVCache | None = None, keep: bool = False, attention: str = "full",
                block_size: int | None = None) -> tuple[torch.Tensor, Scored | None]:
        """The runtime's forward of `ids` at `start`, computing logits where this fidelity does: the
        logits, and the `scored` rows among them (indices, or k for the last k; None: the logits
        are the scored rows, in order)."""
        if self.all_logits:
            return runtime.forward(ids, start, ids.shape[1], cache, keep, attention=attention,
                                   block_size=block_size), scored
        return runtime.forward(ids, start, scored, cache, keep, attention=attention, block_size=block_size), None

    def scoring_bytes(self) -> int | None:
        """Memory per (softmax row, vocab entry) beyond the logits while scoring: the published
        float64 path holds a float64 copy and its softmax, and its Gumbel noise five float64
        buffers at once; float32 scoring a copy and its softmax; None: a softmax in the logits' dtype."""
        if self.softmax_dtype == "float64":
            return 40 if self.temperature else 16
        return 8 if self.softmax_dtype == "float32" else None


    def softmax_rows(self, computed: int, scored: int) -> int:
        return computed if self.softmax_all else scored

    def traffic_bytes(self, logits_bytes: int) -> int:
        """Bytes scoring moves per softmax row and vocab entry: the logits read, and each scoring
        buffer written once and read once."""
        return logits_bytes + 2 * (self.scoring_bytes() or logits_bytes)


def lean(temperature: float = 0.0) -> Scoring:
    return Scoring("lean", all_logits=False, softmax_dtype="float32", temperature=temperature)


def confidence(logits: torch.Tensor, rows: torch.Tensor | None, mask_token_id: int, scoring: Scoring,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted token and its softmax probability at the scored positions.

    logits: (batch, computed, vocab); rows: indices of the scored positions among the computed
    ones (None: all of them) -> confidence (batch, scored) float, tokens (batch, scored).
    """
    import torch

    if scoring.softmax_dtype == "float32":
        logits = logits.float()  # a copy unless the model computes in float32
    logits[..., mask_token_id] = -torch.inf  # committing a mask would leave the answer unfinished
    if rows is not None and not scoring.softmax_all:
        logits = logits[:, rows]
    dtype = {"float64": torch.float64, "float32": torch.float32}.get(scoring.softmax_dtype, logits.dtype)
    if scoring.temperature:
        tokens = sample(logits, scoring, generator)
        probs = torch.softmax(logits.to(dtype), dim=-1)
        chosen = probs.gather(-1, tokens[..., None])[..., 0]
    else:
        chosen, tokens = torch.softmax(logits.to(dtype), dim=-1).max(dim=-1)
    if rows is not None and scoring.softmax_all:
        chosen, tokens = chosen[:, rows], tokens[:, rows]
    return chosen, tokens


def sample(logits: torch.Tensor, scoring: Scoring, generator: torch.Generator | None) -> torch.Tensor:
    """Gumbel-max: argmax of the logits perturbed by noise, (batch, n, vocab) -> (batch, n)."""
    import torch

    if scoring.softmax_dtype == "float64":  # as published: exp(logits) / (-log u) ** temperature, in float64
        logits64 = logits.to(torch.float64)
        noise = torch.rand(logits64.shape, dtype=torch.float64, device=logits.device, generator=generator)
        gumbel = (-torch.log(noise)) ** scoring.temperature
        return (logits64.exp() / gumbel).argmax(dim=-1)
    noise = torch.rand(logits.shape, dtype=torch.float32, device=logits.device, generator=generator)
    return (logits.float() - scoring.temperature * torch.log(-torch.log(noise))).argmax(dim=-1)


def greedy_token(logits: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """The argmax of the last position, never the mask token: (batch, n, vocab) -> (batch,)."""
    import torch

    last = logits[:, -1].float()
    last[:, mask_token_id] = -torch.inf
    return last.argmax(dim=-1)
