"""Autoregressive decoding: prefill the prompt into a KV cache, then one token per forward.

Greedy, or with a temperature Gumbel-max sampled (the distribution of transformers' sampling).
Both fidelities are the same work: transformers' `generate` computes the last position's logits only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_dlmbench.core import DEFAULT_FIDELITY
from pytest_dlmbench.memory_model import Phase, parameter_count
from pytest_dlmbench.paradigms.base import DecodeOptions, ForwardLog, GenerationResult, register, validate_lengths
from pytest_dlmbench.paradigms.scoring import lean, sample

if TYPE_CHECKING:
    import torch

    from pytest_dlmbench.models import ModelSpec
    from pytest_dlmbench.runtimes import Runtime


@register
@dataclass(frozen=True)
class AutoregressiveDecoder:
    """Greedy decoding of exactly `gen_len` tokens (EOS ignored); NFE = gen_len."""

    name: ClassVar[str] = "ar"
    strategies: ClassVar[tuple[str, ...]] = ("baseline",)
    paper_equation: ClassVar[str] = "eq. 11"  # paper_arithmetic_intensity's closed form
    temperature: float = 0.0
    seed: int = 0  # sampling noise, with a temperature

    @classmethod
    def from_options(cls, options: DecodeOptions, strategy: str = "baseline",
                     fidelity: str = DEFAULT_FIDELITY) -> AutoregressiveDecoder:
        return cls(options.temperature, options.seed)

    def validate(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch_size: int) -> None:
        validate_lengths(spec, prompt_len, gen_len, batch_size)

    def describe(self, spec: ModelSpec, gen_len: int) -> dict[str, Any]:
        return {"block_size": None, "steps": None, "acceptance": "fixed", "threshold": None, "tpf_target": None}

    def paper_arithmetic_intensity(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch: int) -> float:
        n = parameter_count(spec)  # eq. 11: B N / (N + B n_l n_h n_d L)
        return batch * n / (n + batch * spec.num_layers * spec.num_heads * spec.head_dim * (prompt_len + gen_len))

    def memory_phases(self, spec: ModelSpec, prompt_len: int, gen_len: int) -> list[Phase]:
        # the prefill, then the last decode step on the full cache
        return [Phase(prompt_len, prompt_len, 1, cache_grows=False), Phase(prompt_len + gen_len, 1, 1)]

    def generate(
        self, runtime: Runtime, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog
    ) -> GenerationResult:
        import torch

        batch, prompt_len = prompt_ids.shape
        self.validate(spec, prompt_len, gen_len, batch)
        cache = runtime.new_cache(batch, prompt_len + gen_len)
        tokens = torch.empty(batch, gen_len, dtype=torch.long, device=prompt_ids.device)
        scoring = lean(self.temperature)
        noise = torch.Generator(tokens.device).manual_seed(self.seed) if self.temperature else None

        def pick(logits: torch.Tensor) -> torch.Tensor:  # (batch, 1, vocab) -> (batch,)
            return sample(logits, scoring, noise)[:, -1] if self.temperature else logits[:, -1].argmax(dim=-1)

        with log.forward("prefill", prompt_len, prompt_len, 1, "causal", prompt_len):  # its last logit is token 0
            logits = runtime.forward(prompt_ids, 0, 1, cache, keep=True, attention="causal")
        tokens[:, 0] = pick(logits)
        for position in range(1, gen_len):
            # (batch, 1) in, (batch, 1, vocab) out
            with log.forward("decode", 1, prompt_len + position, 1, "causal", 1):
                logits = runtime.forward(tokens[:, position - 1 : position], prompt_len + position - 1, 1, cache,
                                         keep=True)
            tokens[:, position] = pick(logits)
        return log.result(tokens)

    def fixed_shapes(self, spec: ModelSpec, gen_len: int) -> bool:
        return True  # a prefill, then gen_len - 1 one-token steps

    def probe(self, runtime: Runtime, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog) -> None:
        """The prefill, then the last two decode steps on a cache padded to its final length."""
        batch, prompt_len = prompt_ids.shape
        cache = runtime.new_cache(batch, prompt_len + gen_len)
        with log.forward("prefill", prompt_len, prompt_len, 1, "causal", prompt_len):
            runtime.forward(prompt_ids, 0, 1, cache, keep=True, attention="causal")
        cache.extend(prompt_len + gen_len - 3)
        for position in range(max(1, gen_len - 2), gen_len):
            with log.forward("decode", 1, prompt_len + position, 1, "causal", 1):
                runtime.forward(prompt_ids[:, -1:], prompt_len + position - 1, 1, cache, keep=True)
