"""pytest-xdist scheduling of benchmark points: grouped by model, spread over the workers.

Each model's points are dealt into as many groups as there are workers (grid.deal: round-robin,
so every group mixes short and long points, and a point's runtimes stay together); a worker runs
a group whole. With the usual start (each worker takes one group of the first model, then one of
the next) a worker loads each model once, and every worker is busy until the end.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from pytest_dlmbench.core import BenchPoint
from pytest_dlmbench.grid import deal


def model_groups(points: dict[str, BenchPoint], workers: int) -> dict[str, str]:
    """Test parameter id -> its group, e.g. "llada-8b#1"."""
    groups: dict[str, str] = {}
    for model in dict.fromkeys(point.model for point in points.values()):
        tests = [(test_id, point) for test_id, point in points.items() if point.model == model]
        hands = deal([point for _, point in tests], workers)
        groups |= {test_id: f"{model}#{hand}" for (test_id, _), hand in zip(tests, hands)}
    return groups


class ModelScheduling(LoadScopeScheduling):
    """xdist's scope scheduling with model groups as the scopes; other tests are their own scope."""

    def __init__(self, config: pytest.Config, log: Any, points: dict[str, BenchPoint]) -> None:
        super().__init__(config, log)
        self.groups = model_groups(points, self.numnodes)

    def _split_scope(self, nodeid: str) -> str:
        parameters = nodeid.partition("[")[2].removesuffix("]")
        return self.groups.get(parameters, nodeid)
