"""KV-cache surgery on transformers' DynamicCache for the diffusion caching strategies.

Attention without a mask is invariant to the order of the keys, so a cache may hold the prefix
and the suffix of a sequence side by side while a span between them is re-forwarded at its true
positions (RoPE is applied before caching).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache


def drop_span(cache: DynamicCache, start: int, end: int) -> None:
    """Remove cached positions [start, end) from every layer."""
    import torch

    for layer in cache.layers:
        layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2)


def extend(cache: DynamicCache, length: int, model: Any, batch: int) -> None:
    """Pad every layer with zero KV up to `length` positions: the cache a generation would have
    built by then, for memory probes that skip the forwards that build it."""
    import torch

    config = model.config
    for index in range(config.num_hidden_layers):
        missing = length - cache.get_seq_length(index)
        if missing > 0:
            zeros = torch.zeros(batch, config.num_key_value_heads, missing, config.head_dim, dtype=model.dtype,
                                device=model.device)
            cache.update(zeros, zeros, index)


def truncate(cache: DynamicCache, length: int) -> None:
    """Keep only the first `length` cached positions."""
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)


def forward_span(model: Any, ids: torch.Tensor, start: int, cache: DynamicCache, rows: torch.Tensor,
                 **kwargs: Any) -> torch.Tensor:
    """Logits at `rows` of `ids` placed at positions start.. against `cache`, which is left as it was.

    ids: (batch, n) -> logits (batch, len(rows), vocab).
    """
    import torch

    positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None]  # (1, n)
    logits = model(ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=rows,
                   **kwargs).logits
    cache.crop(-ids.shape[1])
    return logits
