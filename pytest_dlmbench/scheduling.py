"""pytest-xdist scheduling of benchmark points: grouped by model, spread over the workers.

Each model's points are dealt into as many groups as there are workers (grid.deal: round-robin,
so every group mixes short and long points, and a point's runtimes stay together); a worker runs
a group whole. With the usual start (each worker takes one group of the first model, then one of
the next) a worker loads each model once, and every worker is busy until the end. A point whose
worker died is not run again, and its worker's replacement takes up the rest.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_dlmbench.core import BenchPoint
from pytest_dlmbench.grid import deal
from pytest_dlmbench.integrations.xdist import GroupScheduling


def model_groups(points: dict[str, BenchPoint], workers: int) -> dict[str, str]:
    """Test parameter id -> its group, e.g. "llada-8b#1"."""
    groups: dict[str, str] = {}
    for model in dict.fromkeys(point.model for point in points.values()):
        tests = [(test_id, point) for test_id, point in points.items() if point.model == model]
        hands = deal([point for _, point in tests], workers)
        groups |= {test_id: f"{model}#{hand}" for (test_id, _), hand in zip(tests, hands)}
    return groups


def model_scheduling(config: pytest.Config, log: Any, points: dict[str, BenchPoint]) -> GroupScheduling:
    """xdist's scope scheduling with this session's model groups as the scopes."""
    return GroupScheduling(config, log, lambda workers: model_groups(points, workers))
