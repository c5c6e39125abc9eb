"""The OOM boundary (with --dlm-boundary): the largest batch that completes a full generation,
per paradigm x strategy x prompt x gen, and the throughput at that batch."""

from __future__ import annotations

from typing import Any


def test_oom_boundary(dlm_boundary: Any, dlm_boundary_point: Any) -> None:
    metrics = dlm_boundary(dlm_boundary_point)
    assert metrics.status == "ok" and metrics.batch_size >= 1
