"""Masked diffusion (LLaDA): every step is one bidirectional forward over prompt + answer.

The answer starts as `gen_len` mask tokens, split into semi-autoregressive blocks decoded left
to right. The step budget is split evenly over the blocks; each step commits the k most
confident masked positions of the current block, k following LLaDA's linear schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pytest_dlmbench.paradigms.base import (
    DecodeError,
    DecodeOptions,
    ForwardLog,
    GenerationResult,
    greedy_confidence,
    register,
    validate_lengths,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from pytest_dlmbench.models import ModelSpec


def linear_schedule(masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of `steps` steps: masked // steps each, the remainder first."""
    base, remainder = divmod(masked, steps)
    return [base + (1 if step < remainder else 0) for step in range(steps)]


@register
@dataclass(frozen=True)
class MaskedDiffusionDecoder:
    """LLaDA low-confidence remasking, greedy; NFE = steps."""

    name: ClassVar[str] = "dlm"
    block_len: int = 32
    steps: int | None = None  # None: one step per generated token

    @classmethod
    def from_options(cls, options: DecodeOptions) -> MaskedDiffusionDecoder:
        return cls(block_len=options.block_len, steps=options.steps)

    def total_steps(self, gen_len: int) -> int:
        return self.steps if self.steps is not None else gen_len

    def describe(self, spec: ModelSpec, gen_len: int) -> dict[str, int | None]:
        return {"block_size": self.block_len, "steps": self.total_steps(gen_len)}

    def validate(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch_size: int) -> None:
        validate_lengths(spec, prompt_len, gen_len, batch_size)
        if spec.mask_token_id is None:
            raise DecodeError(f"model {spec.name} has no mask token; masked diffusion needs one")
        if self.block_len <= 0 or gen_len % self.block_len:
            raise DecodeError(f"gen_len={gen_len} must be a positive multiple of block_len={self.block_len}")
        blocks, steps = gen_len // self.block_len, self.total_steps(gen_len)
        if steps <= 0 or steps % blocks:
            raise DecodeError(f"steps={steps} must be a positive multiple of the number of blocks ({blocks})")

    def generate(
        self, model: PreTrainedModel, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog
    ) -> GenerationResult:
        import torch

        batch, prompt_len = prompt_ids.shape
        self.validate(spec, prompt_len, gen_len, batch)
        mask_id = spec.mask_token_id
        answer = torch.full((batch, gen_len), mask_id, dtype=torch.long, device=prompt_ids.device)
        x = torch.cat([prompt_ids, answer], dim=1)  # (batch, prompt_len + gen_len)
        steps_per_block = self.total_steps(gen_len) // (gen_len // self.block_len)
        for start in range(prompt_len, prompt_len + gen_len, self.block_len):
            block = slice(start, start + self.block_len)
            logit_rows = torch.arange(start, start + self.block_len, device=x.device)
            for commit_count in linear_schedule(self.block_len, steps_per_block):
                with log.forward("step"):  # full bidirectional forward; logits for this block only
                    logits = model(x, logits_to_keep=logit_rows).logits  # (batch, block_len, vocab)
                confidence, predicted = greedy_confidence(logits, mask_id)
                masked = x[:, block] == mask_id  # (batch, block_len)
                confidence = torch.where(masked, confidence, -torch.inf)
                chosen = torch.zeros_like(masked)
                chosen.scatter_(1, confidence.topk(commit_count, dim=-1).indices, True)  # k most confident
                x[:, block] = torch.where(chosen, predicted, x[:, block])
        return log.result(x[:, prompt_len:])
