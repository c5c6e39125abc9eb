"""Tiny fp32 models shared by the decoder tests, built once per session; where the tests' own
pytest sessions run (the CPU, unless a test is marked `cuda`)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton's kernels run in its interpreter (read when Triton is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import tiny

CPU_SESSIONS = "--dlm-device=cpu"  # the tiny-model grids and fp32 numbers these tests expect


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one); its pytester sessions "
                                       "run on the GPU")
    config.addinivalue_line("markers", "default_device: its pytester sessions pick the machine's default device "
                                       "(what the test checks)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def sessions_on_the_cpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's own pytest sessions (pytester, in process or not) measure the CPU, whatever this
    machine has, unless the test is marked `cuda` or `default_device`: their expectations (the
    smoke grid of tiny fp32 models, CPU memory readings) are the CPU's, and on a GPU the defaults
    would pick the 8B grid."""
    pinned = not any(request.node.get_closest_marker(name) for name in ("cuda", "default_device"))
    if "pytester" in request.fixturenames and pinned:
        request.getfixturevalue("pytester")  # first: it clears PYTEST_ADDOPTS when it starts
        monkeypatch.setenv("PYTEST_ADDOPTS", CPU_SESSIONS)


@pytest.fixture(scope="session")
def tiny_ar():
    return tiny("tiny-ar")


@pytest.fixture(scope="session")
def tiny_dlm():
    return tiny("tiny-dlm")


@pytest.fixture(scope="session")
def tiny_block():
    return tiny("tiny-block")
