"""Decoding paradigms, one module each; importing this package registers them all."""

from pytest_dlmbench.paradigms import ar, block, dlm  # noqa: F401  (registration)
from pytest_dlmbench.paradigms.base import (
    PARADIGMS,
    DecodeError,
    DecodeOptions,
    ForwardLog,
    GenerationResult,
    Paradigm,
    make_paradigm,
)

__all__ = [
    "PARADIGMS",
    "DecodeError",
    "DecodeOptions",
    "ForwardLog",
    "GenerationResult",
    "Paradigm",
    "make_paradigm",
]
