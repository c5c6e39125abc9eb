"""The execution layer the paradigms call: a KV cache by absolute position and one forward call.

A paradigm never calls the model itself. It asks its runtime for a cache and for forwards of a
span of ids placed at positions [start, start + n). A forward attends to what the cache holds
plus its own keys; with `keep=True` its keys stay cached, otherwise the cache is as before (a
runtime may leave the span's slots written: a paradigm never reads a position it did not keep
or did not cache again). Cache edits (`truncate`, `drop`) name absolute positions, so a runtime
may store keys in any order: attention without a mask does not depend on the keys' order.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

ATTENTION_KINDS = ("full", "causal", "block_causal")


class KVCache(Protocol):
    """Keys and values of a batch of sequences, by absolute position."""

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on."""
        ...

    def drop(self, start: int, end: int) -> None:
        """Forget positions [start, end) (the cache holds every position below `end` when called)."""
        ...

    def extend(self, length: int) -> None:
        """Hold zero keys up to `length`: the cache a generation would have built by then, for
        memory probes that skip the forwards that build it."""
        ...


class Runtime(Protocol):
    """Runs one model's forwards; one instance per benchmark point, reused by its rounds."""

    name: ClassVar[str]
    model: PreTrainedModel
    capture_s: float | None  # seconds spent capturing or compiling so far (None: nothing is captured)
    concatenates: ClassVar[bool]  # a forward that extends the cache copies what it held (the roofline counts it)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty cache for `batch` sequences of at most `capacity` positions."""
        ...

    def forward(self, ids: torch.Tensor, start: int, rows: torch.Tensor | int, cache: KVCache | None = None,
                keep: bool = False, attention: str = "full", block_size: int | None = None) -> torch.Tensor:
        """Logits of `ids` (batch, n) placed at positions start.. against `cache`.

        rows: indices into the n positions, or k for the last k; attention: one of ATTENTION_KINDS
        ("causal" over a cache: each position sees the cache and the span up to itself;
        "block_causal" only on an empty cache, with `block_size`).
        Returns (batch, rows, vocab), valid until the next forward of this runtime.
        """
        ...

    def skipping_seen_shapes(self) -> AbstractContextManager[None]:
        """Inside, a forward of a shape this runtime has captured is not run: it returns the
        logits its last run left. For untimed capture runs of generations whose forward shapes
        never depend on the logits (`Paradigm.fixed_shapes`); a no-op where nothing is captured."""
        ...


class RuntimeClass(Protocol):
    """What the registry holds: a runtime class, built as `cls(model)`."""

    name: str
    concatenates: bool

    def __call__(self, model: PreTrainedModel) -> Runtime: ...


def cache_keyword(model: PreTrainedModel) -> str:
    """The name the model's forward gives its cache argument: `cache` in newer transformers,
    `past_key_values` before (the old name is deprecated where the new one exists)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def block_causal_mask(length: int, block_size: int, device: torch.device) -> torch.Tensor:
    """(1, 1, length, length) bool: position q may attend to k when block(q) >= block(k)."""
    import torch

    blocks = torch.arange(length, device=device) // block_size
    return (blocks[:, None] >= blocks[None, :])[None, None]


def causal_over_cache_mask(start: int, n: int, device: torch.device) -> torch.Tensor:
    """(1, 1, n, start + n) bool: the query at position start + i sees positions <= start + i (a
    span verified causally over a cache holding [0, start), as draft-and-verify decoders do)."""
    import torch

    return (torch.arange(start + n, device=device)[None, :] <= torch.arange(start, start + n, device=device)[:, None]
            )[None, None]


def check_attention(attention: str, cached: int, block_size: int | None) -> None:
    """Full and causal attention run over a cache; a block-causal mask over one is needed by no
    paradigm, so it is refused rather than guessed."""
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention={attention!r}; allowed: {', '.join(ATTENTION_KINDS)}")
    if attention == "block_causal" and cached:
        raise ValueError(f"attention={attention!r} needs an empty cache, which holds {cached} positions")
    if attention == "block_causal" and not block_size:
        raise ValueError("attention='block_causal' needs block_size")
