"""Hugging Face transformers as the published decoders use it: DynamicCache, one Python call per forward.

The seed papers' setup; every kernel launch is dispatched by the host, so at small batch the
host, not the device, sets the pace.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_dlmbench.runtimes.base import block_causal_mask, cache_keyword, check_attention

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel


@dataclass
class DynamicKV:
    """transformers' DynamicCache, edited by concatenation; positions are cache indices."""

    cache: DynamicCache
    model: PreTrainedModel
    batch: int

    def length(self) -> int:
        return self.cache.get_seq_length()

    def truncate(self, length: int) -> None:
        excess = self.length() - length
        if excess > 0:
            self.cache.crop(-excess)

    def drop(self, start: int, end: int) -> None:
        import torch

        for layer in self.cache.layers:
            layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2)
            layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2)

    def extend(self, length: int) -> None:
        import torch

        config, model = self.model.config, self.model
        for index in range(config.num_hidden_layers):
            missing = length - self.cache.get_seq_length(index)
            if missing > 0:
                zeros = torch.zeros(self.batch, config.num_key_value_heads, missing, config.head_dim,
                                    dtype=model.dtype, device=model.device)
                self.cache.update(zeros, zeros, index)


class EagerRuntime:
    """Each forward is the model's own `forward` on a DynamicCache that grows and is cut."""

    name: ClassVar[str] = "eager"
    concatenates: ClassVar[bool] = True  # DynamicCache.update: torch.cat per layer

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.capture_s: float | None = None
        self.keyword = cache_keyword(model)

    def new_cache(self, batch: int, capacity: int) -> DynamicKV:
        from transformers import DynamicCache

        return DynamicKV(DynamicCache(config=self.model.config), self.model, batch)

    def forward(self, ids: torch.Tensor, start: int, rows: torch.Tensor | int, cache: DynamicKV | None = None,
                keep: bool = False, attention: str = "full", block_size: int | None = None) -> torch.Tensor:
        import torch

        check_attention(attention, cache.length() if cache is not None else 0, block_size)
        n = ids.shape[1]
        kwargs: dict[str, Any] = {"is_causal": attention == "causal"}
        if attention == "block_causal":
            kwargs["attention_mask"] = block_causal_mask(n, block_size or n, ids.device)
        if cache is not None:
            kwargs[self.keyword] = cache.cache
        positions = torch.arange(start, start + n, device=ids.device)[None]  # (1, n)
        logits = self.model(ids, position_ids=positions, use_cache=cache is not None, logits_to_keep=rows,
                            **kwargs).logits
        if cache is not None and not keep:
            cache.cache.crop(-n)
        return logits

    def skipping_seen_shapes(self) -> AbstractContextManager[None]:
        return nullcontext()  # nothing is captured, so every forward runs
