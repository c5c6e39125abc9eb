"""pytest-xdist beyond its public hooks: a scope scheduler whose scopes are given, topped up so a
new worker never waits, and that does not run a dead worker's test again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling


def worker_input(config: pytest.Config) -> dict[str, Any]:
    """What the controller sent this worker (xdist's `config.workerinput`; none in the controller)."""
    return config.workerinput  # type: ignore[attr-defined]  # set by xdist on worker configs


def worker_of(report: pytest.TestReport) -> str | None:
    """The worker id xdist puts on the report of a test its worker died running."""
    return getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None)


class GroupScheduling(LoadScopeScheduling):
    """xdist's scope scheduling with given scopes: `scopes(workers)` maps a test's parameter id to
    its scope; a test it does not name is its own scope."""

    def __init__(self, config: pytest.Config, log: Any, scopes: Callable[[int], dict[str, str]]) -> None:
        super().__init__(config, log)
        self.scopes = scopes(self.numnodes)

    def _split_scope(self, nodeid: str) -> str:
        return self.scopes.get(nodeid.partition("[")[2].removesuffix("]"), nodeid)

    def _reschedule(self, node: Any) -> None:
        """xdist's, topped up to two tests: a worker runs a test only once it holds the next one (or
        is told to stop), so a new worker given a one-test group alone would wait forever."""
        super()._reschedule(node)
        while (self.workqueue and not node.shutting_down and node in self.assigned_work
               and self._pending_of(self.assigned_work[node]) < 2):
            self._assign_work_unit(node)

    def remove_node(self, node: Any) -> str | None:
        """xdist's, changed where a worker died: its test is not run again (it is saved as an error,
        and the next worker would likely die the same way), and only groups with tests left go
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
