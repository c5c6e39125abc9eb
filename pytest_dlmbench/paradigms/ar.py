"""Autoregressive decoding: prefill the prompt into a KV cache, then one greedy token per forward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_dlmbench.memory_model import Phase, parameter_count
from pytest_dlmbench.paradigms.base import DecodeOptions, ForwardLog, GenerationResult, register, validate_lengths
from pytest_dlmbench.paradigms.kv import extend

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from pytest_dlmbench.models import ModelSpec


@register
@dataclass(frozen=True)
class AutoregressiveDecoder:
    """Greedy decoding of exactly `gen_len` tokens (EOS ignored); NFE = gen_len."""

    name: ClassVar[str] = "ar"
    strategies: ClassVar[tuple[str, ...]] = ("baseline",)

    @classmethod
    def from_options(cls, options: DecodeOptions, strategy: str = "baseline") -> AutoregressiveDecoder:
        return cls()

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
        self, model: PreTrainedModel, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog
    ) -> GenerationResult:
        import torch
        from transformers import DynamicCache

        self.validate(spec, prompt_ids.shape[1], gen_len, prompt_ids.shape[0])
        cache = DynamicCache(config=model.config)
        tokens = torch.empty(prompt_ids.shape[0], gen_len, dtype=torch.long, device=prompt_ids.device)
        prompt_len = prompt_ids.shape[1]
        with log.forward("prefill", prompt_len, prompt_len, 1, "causal", prompt_len):  # its last logit is token 0
            logits = model(prompt_ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        tokens[:, 0] = logits[:, -1].argmax(dim=-1)
        for position in range(1, gen_len):
            with log.forward("decode", 1, prompt_len + position, 1, "causal", 1):  # (batch, 1) in, (batch, 1, vocab) out
                logits = model(tokens[:, position - 1 : position], past_key_values=cache, use_cache=True).logits
            tokens[:, position] = logits[:, -1].argmax(dim=-1)
        return log.result(tokens)

    def probe(self, model: PreTrainedModel, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog) -> None:
        """The prefill, then the last two decode steps on a cache padded to its final length."""
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        batch, prompt_len = prompt_ids.shape
        with log.forward("prefill", prompt_len, prompt_len, 1, "causal", prompt_len):
            model(prompt_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        extend(cache, prompt_len + gen_len - 3, model, batch)
        for position in range(max(1, gen_len - 2), gen_len):
            with log.forward("decode", 1, prompt_len + position, 1, "causal", 1):
                model(prompt_ids[:, -1:], past_key_values=cache, use_cache=True)
