"""The generation grid: every selected paradigm x model x prompt x gen x batch point."""

from __future__ import annotations

from typing import Any


def test_generation(dlm_bench: Any, dlm_point: Any) -> None:
    metrics = dlm_bench(dlm_point)
    assert metrics.status == "ok"
    assert metrics.tokens_per_s is not None and metrics.tokens_per_s > 0
