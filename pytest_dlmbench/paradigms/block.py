"""Block diffusion (Fast-dLLM v2): KV-cached blocks, bidirectional attention inside each block.

Blocks sit at absolute multiples of the block size. The block-aligned part of the prompt is
prefilled under the block-causal mask (a query block sees key blocks at or before it). Each
block is then denoised sub-block by sub-block: a forward over the whole block against the cached
prefix (whose own KV is dropped again), logits shifted by one token, and every masked position
of the sub-block whose confidence exceeds the threshold committed, plus the most confident one.
A finished block is forwarded once more to append its KV; that forward's last logit is the
next block's first token.
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


def block_causal_mask(length: int, block_size: int, device: torch.device) -> torch.Tensor:
    """(1, 1, length, length) bool: position q may attend to k when block(q) >= block(k)."""
    import torch

    blocks = torch.arange(length, device=device) // block_size
    return (blocks[:, None] >= blocks[None, :])[None, None]


def commit_confident(
    x_span: torch.Tensor, logits: torch.Tensor, mask_id: int, threshold: float
) -> torch.Tensor:
    """New span: masked positions above `threshold` confidence, and each row's most confident one.

    x_span: (batch, n) ids; logits: (batch, n, vocab), already aligned to the span's positions.
    """
    import torch

    confidence, predicted = greedy_confidence(logits, mask_id)
    masked = x_span == mask_id
    confidence = torch.where(masked, confidence, -torch.inf)
    chosen = confidence > threshold
    chosen.scatter_(1, confidence.argmax(dim=-1, keepdim=True), True)
    return torch.where(chosen & masked, predicted, x_span)


@register
@dataclass(frozen=True)
class BlockDiffusionDecoder:
    """Fast-dLLM v2 decoding; with threshold 1.0 exactly one token is committed per step."""

    name: ClassVar[str] = "block"
    threshold: float = 1.0

    @classmethod
    def from_options(cls, options: DecodeOptions) -> BlockDiffusionDecoder:
        return cls()

    def describe(self, spec: ModelSpec, gen_len: int) -> dict[str, int | None]:
        return {"block_size": spec.block_size, "steps": None}  # steps follow from the threshold

    def validate(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch_size: int) -> None:
        validate_lengths(spec, prompt_len, gen_len, batch_size)
        if spec.mask_token_id is None or spec.block_size is None or spec.subblock_size is None:
            raise DecodeError(f"model {spec.name} is not a block-diffusion model (needs mask token and block sizes)")

    def generate(
        self, model: PreTrainedModel, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog
    ) -> GenerationResult:
        import torch
        from transformers import DynamicCache

        batch, prompt_len = prompt_ids.shape
        self.validate(spec, prompt_len, gen_len, batch)
        mask_id, block_size, subblock_size = spec.mask_token_id, spec.block_size, spec.subblock_size
        total = prompt_len + gen_len
        answer = torch.full((batch, gen_len), mask_id, dtype=torch.long, device=prompt_ids.device)
        x = torch.cat([prompt_ids, answer], dim=1)  # (batch, total)
        cache = DynamicCache(config=model.config)
        aligned = prompt_len // block_size * block_size
        next_logits = None  # (batch, vocab): the prediction for the next block's first position
        if aligned:
            with log.forward("prefill"):
                mask = block_causal_mask(aligned, block_size, x.device)
                out = model(x[:, :aligned], attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
            next_logits = out.logits[:, -1:]
        for start in range(aligned, total, block_size):
            end = min(start + block_size, total)
            if start >= prompt_len:  # token shift: the previous forward's last logit predicts it
                x[:, start : start + 1] = commit_confident(x[:, start : start + 1], next_logits, mask_id, self.threshold)
            for sub_start in range(start, end, subblock_size):
                sub = slice(sub_start, min(sub_start + subblock_size, end))
                # logits for position p come from p - 1 (position `start` is never masked here)
                rows = (torch.arange(sub.start, sub.stop, device=x.device) - 1).clamp(min=start) - start
                while bool((x[:, sub] == mask_id).any()):
                    with log.forward("step"):  # (batch, block) against the cached prefix, no mask
                        logits = model(
                            x[:, start:end], past_key_values=cache, use_cache=True, is_causal=False, logits_to_keep=rows
                        ).logits  # (batch, sub-block, vocab)
                    cache.crop(-(end - start))  # keep only the prefix
                    x[:, sub] = commit_confident(x[:, sub], logits, mask_id, self.threshold)
            if end < total:
                with log.forward("commit"):  # append the finished block's KV
                    out = model(x[:, start:end], past_key_values=cache, use_cache=True, is_causal=False, logits_to_keep=1)
                next_logits = out.logits[:, -1:]
        return log.result(x[:, prompt_len:])
