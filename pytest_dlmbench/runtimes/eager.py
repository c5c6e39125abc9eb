"""Hugging Face transformers as the published decoders use it: DynamicCache, one Python call per forward.

The seed papers' setup; every kernel launch is dispatched by the host, so at small batch the
host, not the device, sets the pace.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_dlmbench.runtimes.base import (
    KVCache,
    block_causal_mask,
    cache_keyword,
    causal_over_cache_mask,
    check_attention,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


@functools.cache
def slot_cache_class() -> type:
    """transformers' DynamicCache that can also write a forward's keys over slots it holds."""
    from transformers import DynamicCache

    class SlotCache(DynamicCache):
        write_at: slice | None = None  # while set, `update` overwrites these slots instead of appending

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if self.write_at is None:
                return super().update(key_states, value_states, layer_idx, *args, **kwargs)
            layer: Any = self.layers[layer_idx]  # keys (B, KVH, slots, D); an attention layer, never a linear one
            layer.keys[..., self.write_at, :] = key_states
            layer.values[..., self.write_at, :] = value_states
            return layer.keys, layer.values

        def get_mask_sizes(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
            length, offset = super().get_mask_sizes(*args, **kwargs)  # counts the queries as appended
            if self.write_at is not None:
                length -= self.write_at.stop - self.write_at.start
            return length, offset

    return SlotCache


@dataclass
class DynamicKV:
    """transformers' DynamicCache; positions are cache indices. A dropped span stays stored, stale,
    until a forward of exactly that span writes its keys there in place (Fast-dLLM's dual cache
    replaces the block's slots so; appending instead copies the whole cache in every layer); any
    other edit or forward first cuts it out."""

    cache: Any  # SlotCache
    model: PreTrainedModel
    batch: int
    stale: tuple[int, int] | None = None  # dropped positions still stored

    def length(self) -> int:
        """Positions the cache holds (stale ones not counted)."""
        start, end = self.stale or (0, 0)
        return self.cache.get_seq_length() - (end - start)

    def truncate(self, length: int) -> None:
        self.cut_stale()
        excess = self.length() - length
        if excess > 0:
            self.cache.crop(-excess)

    def drop(self, start: int, end: int) -> None:
        self.cut_stale()
        self.stale = (start, end)

    def cut_stale(self) -> None:
        """Remove the stale span by concatenating what is around it."""
        import torch

        if self.stale is None:
            return
        start, end = self.stale
        self.stale = None
        for layer in self.cache.layers:
            layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2)
            layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2)

    def extend(self, length: int) -> None:
        import torch

        self.cut_stale()
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
        return DynamicKV(slot_cache_class()(config=self.model.config), self.model, batch)

    def forward(self, ids: torch.Tensor, start: int, rows: torch.Tensor | int, cache: KVCache | None = None,
                keep: bool = False, attention: str = "full", block_size: int | None = None) -> torch.Tensor:
        import torch

        if cache is not None and not isinstance(cache, DynamicKV):
            raise TypeError(f"the eager runtime runs on its own caches (new_cache), not a {type(cache).__name__}")
        cached = cache.length() if cache is not None else 0
        check_attention(attention, cached, block_size)
        n = ids.shape[1]
        kwargs: dict[str, Any] = {"is_causal": attention == "causal"}
        if attention == "block_causal":
            kwargs["attention_mask"] = block_causal_mask(n, block_size or n, ids.device)
        elif attention == "causal" and cached and n > 1:  # the span causal among itself, over the whole cache
            kwargs["attention_mask"] = causal_over_cache_mask(start, n, ids.device)
        in_place = cache is not None and cache.stale == (start, start + n)
        if cache is not None:
            if not in_place:
                cache.cut_stale()
            kwargs[self.keyword] = cache.cache
            cache.cache.write_at = slice(start, start + n) if in_place else None
        positions = torch.arange(start, start + n, device=ids.device)[None]  # (1, n)
        try:
            logits = self.model(ids, position_ids=positions, use_cache=cache is not None, logits_to_keep=rows,
                                **kwargs).logits
        finally:
            if cache is not None:
                cache.cache.write_at = None
        if cache is not None and in_place and keep:
            cache.stale = None  # the span's slots hold its keys now
        elif cache is not None and not keep and not in_place:
            cache.cache.crop(-n)
        return logits

    def skipping_seen_shapes(self) -> AbstractContextManager[None]:
        return nullcontext()  # nothing is captured, so every forward runs
