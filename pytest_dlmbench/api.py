"""The public API for extending the harness from another package: models, strategies, paradigms
and runtimes, registered once and then selected, measured, saved and gated like the built-ins.

A package makes its additions known without any import by the user through an entry point in
the `dlmbench` group (a module that registers at import, or a callable that does)::

    [project.entry-points.dlmbench]
    my_method = "my_package.bench"

Everything here is read live: the options, the grids and isolated probe processes see what was
registered, whenever it was. docs/write-a-plugin.md walks through a complete plugin.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pytest_dlmbench.core import BenchPoint, DecodeOptions
from pytest_dlmbench.extensions import ENTRY_POINT_GROUP, registered_from
from pytest_dlmbench.models import ModelSpec, get_spec, spec_from_config
from pytest_dlmbench.models import register_model as _register_model
from pytest_dlmbench.paradigms.acceptance import Acceptance, Counted
from pytest_dlmbench.paradigms.base import (
    PARADIGMS,
    DecodeError,
    ForwardLog,
    GenerationResult,
    Paradigm,
    StrategyBuilder,
    add_strategy,
    make_paradigm,
    register,
    strategies_of,
)
from pytest_dlmbench.runtimes import RUNTIMES, KVCache, Runtime, RuntimeClass

P = TypeVar("P", bound="type[Paradigm]")
R = TypeVar("R", bound=RuntimeClass)


def _caller() -> str:
    return str(sys._getframe(2).f_globals.get("__name__", "__main__"))


def register_model(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    """Make a model shape selectable by its name (`--dlm-models=NAME`); built with random weights,
    or loaded from `--dlm-checkpoint NAME=PATH`. It runs `spec.paradigms`."""
    registered_from(_caller())
    return _register_model(spec, replace)


def register_model_config(config: str | Path | dict[str, Any], name: str, paradigm: str, **decoder: Any) -> ModelSpec:
    """`register_model` of a transformers config.json (a path or its dict) of any causal-LM family;
    `decoder` sets what a config does not say (mask_token_id, bidirectional, shifted_logits, ...)."""
    registered_from(_caller())
    return _register_model(spec_from_config(config, name, paradigm, **decoder))


def register_strategy(paradigm: str, name: str, build: StrategyBuilder) -> None:
    """Add strategy `name` to `paradigm`: `build(options, fidelity)` returns the configured decoder
    (typically a built-in decoder with another acceptance rule or cache). Selected with
    `--dlm-strategies=NAME`; its points' ids end in `-NAME` and its token agreement is measured
    against the paradigm's baseline, as for the built-in strategies."""
    registered_from(_caller())
    add_strategy(paradigm, name, build)


def register_paradigm(cls: P) -> P:
    """Add a decoding paradigm (a class with the `Paradigm` members and a `from_options(options,
    strategy, fidelity)` classmethod); `runtimes` on the class names those it runs on (default:
    every one). Usable as a class decorator."""
    registered_from(_caller())
    return register(cls)


def register_runtime(cls: R) -> R:
    """Add an execution runtime (a class with the `Runtime` members, built as `cls(model)`);
    selected with `--dlm-runtime=NAME`. A `check_model(config)` classmethod may refuse
    architectures it does not implement (raise ValueError naming the missing part)."""
    registered_from(_caller())
    RUNTIMES[cls.name] = cls
    return cls


__all__ = [
    "ENTRY_POINT_GROUP",
    "PARADIGMS",
    "RUNTIMES",
    "Acceptance",
    "BenchPoint",
    "Counted",
    "DecodeError",
    "DecodeOptions",
    "ForwardLog",
    "GenerationResult",
    "KVCache",
    "ModelSpec",
    "Paradigm",
    "Runtime",
    "get_spec",
    "make_paradigm",
    "register_model",
    "register_model_config",
    "register_paradigm",
    "register_runtime",
    "register_strategy",
    "spec_from_config",
    "strategies_of",
]
