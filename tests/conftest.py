"""Tiny fp32 models shared by the decoder tests, built once per session."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton's kernels run in its interpreter (read when Triton is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import tiny


@pytest.fixture(scope="session")
def tiny_ar():
    return tiny("tiny-ar")


@pytest.fixture(scope="session")
def tiny_dlm():
    return tiny("tiny-dlm")


@pytest.fixture(scope="session")
def tiny_block():
    return tiny("tiny-block")
