"""transformers beyond its public API: the attention implementation a model runs, switched for a
block, and its decoder layers' forwards replaced for a block."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel


@contextmanager
def attention_implementation(model: PreTrainedModel, name: str) -> Iterator[None]:
    """The model runs `name` as its attention inside the block. A name transformers does not
    know as a mask interface makes the model build no mask (the public setter refuses such names)."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous


@contextmanager
def replaced_forwards(layers: Sequence[nn.Module], forwards: Sequence[Callable[..., Any]]) -> Iterator[None]:
    """Inside the block, layer i's forward is forwards[i], called as transformers calls a decoder
    layer (hidden states first, then keyword arguments)."""
    for layer, forward in zip(layers, forwards, strict=True):
        layer.forward = forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
