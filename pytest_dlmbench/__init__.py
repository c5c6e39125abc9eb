"""pytest-dlmbench: fair generation benchmarks for AR, masked-diffusion and block-diffusion LMs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pytest-dlmbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
