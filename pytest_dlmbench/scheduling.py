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

    def _reschedule(self, node: Any) -> None:
        """xdist's, topped up to two tests: a worker runs a test only once it holds the next one (or
        is told to stop), so a new worker given a one-test group alone would wait forever."""
        super()._reschedule(node)
        while (self.workqueue and not node.shutting_down and node in self.assigned_work
               and self._pending_of(self.assigned_work[node]) < 2):
            self._assign_work_unit(node)

    def remove_node(self, node: Any) -> str | None:
        """xdist's, changed where a worker died: its point is not run again (it is saved as an error,
        and the next worker would likely die the same way), and only groups with points left go
        back to the queue (xdist requeues finished ones too, and a worker sent an empty group never
        reports back: the run hangs)."""
        workload = self.assigned_work.pop(node)  # group -> {test id: finished}
        left = [test_id for group in workload.values() for test_id, finished in group.items() if not finished]
        if not left:
            return None
        crashed = left[0]  # sent in order: the first unfinished test is the one that was running
        for group in workload.values():
            if crashed in group:
                group[crashed] = True
        self.workqueue.update({name: group for name, group in workload.items() if not all(group.values())})
        for other in self.assigned_work:
            self._reschedule(other)
        return crashed
