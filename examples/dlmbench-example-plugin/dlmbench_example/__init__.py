"""Two additions to pytest-dlmbench, registered when pytest-dlmbench loads this module.

- Strategy `dual_cache+factor` of the `dlm` paradigm: Fast-dLLM's factor-based parallel decoding
  (Wu et al., 2025, section 3.3) over the dual KV cache. Each step sorts a row's masked confidences
  c_1 >= c_2 >= ... and commits the largest n with (n + 1)(1 - c_n) < f, at least one token.
- Model `smollm2-135m`: SmolLM2-135M's shapes, from the config.json beside this file, as an AR
  model and as a masked diffusion model (mask id 49151), with random weights.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pytest_dlmbench import api

FACTOR = 1.0  # f in the rule above; the paper sweeps it


@dataclass(frozen=True)
class Factor:
    """The factor rule as an acceptance rule: the model's confidences decide every commit."""

    factor: float = FACTOR
    label: str = "factor"
    threshold: float | None = None  # no single threshold: recorded as null

    def counts(self, masked: int, span: int, batch: int) -> Iterator[None]:
        return itertools.repeat(None)  # None: `select` reads the confidences

    def steps(self, masked: int, span: int, batch: int) -> int | None:
        return None  # the confidences decide how many forwards a block takes

    def select(self, confidence: torch.Tensor) -> torch.Tensor:
        """confidence (batch, n), -inf where nothing is masked -> positions to commit (batch, n)."""
        ordered, order = confidence.sort(dim=-1, descending=True)  # c_1 >= c_2 >= ...
        n = torch.arange(1, ordered.shape[1] + 1, device=ordered.device)  # (n,)
        passes = (n + 1) * (1 - ordered) < self.factor  # unmasked (-inf) positions never pass
        count = passes.int().cumprod(dim=-1).sum(dim=-1).clamp(min=1)  # (batch,) the largest passing n
        chosen_sorted = n[None, :] <= count[:, None]  # (batch, n) the first `count` of each row
        return torch.zeros_like(chosen_sorted).scatter_(1, order, chosen_sorted)


def dual_cache_factor(options: api.DecodeOptions, fidelity: str) -> api.Paradigm:
    """The built-in dual-cache decoder, committing by the factor rule."""
    decoder = api.make_paradigm("dlm", options, "dual_cache", fidelity)
    return dataclasses.replace(decoder, parallel=Factor())


api.register_strategy("dlm", "dual_cache+factor", dual_cache_factor)
api.register_model_config(Path(__file__).with_name("smollm2-135m.json"), "smollm2-135m", "ar",
                          serves=("dlm",), mask_token_id=49151)
