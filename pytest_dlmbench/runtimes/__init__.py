"""Execution runtimes, one module each: how a paradigm's forwards run (see base.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_dlmbench.runtimes.base import KVCache, Runtime, RuntimeClass
from pytest_dlmbench.runtimes.eager import EagerRuntime
from pytest_dlmbench.runtimes.graphs import GraphRuntime

if TYPE_CHECKING:
    from transformers import PreTrainedModel

RUNTIMES: dict[str, RuntimeClass] = {runtime.name: runtime for runtime in (GraphRuntime, EagerRuntime)}


def make_runtime(name: str, model: PreTrainedModel) -> Runtime:
    """A fresh runtime `name` for `model` (its captured graphs live as long as it does)."""
    try:
        return RUNTIMES[name](model)
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known runtimes: {', '.join(RUNTIMES)}") from None


__all__ = ["RUNTIMES", "KVCache", "Runtime", "make_runtime"]
