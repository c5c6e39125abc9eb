"""The plugin's state for one pytest session, in one object (kept on the config's stash)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from pytest_dlmbench.core import BenchPoint, PointMetrics, Settings
    from pytest_dlmbench.gate import Verdict
    from pytest_dlmbench.journal import Journal
    from pytest_dlmbench.store import SavedRun


class Receiver(Protocol):
    """The controller of a pytest-xdist session (workers.Controller), as the session reads it."""

    benchmarks: list[Any]  # the workers' pytest-benchmark entries, saved with this process's

    def placement(self) -> dict[str, int] | None: ...


@dataclass
class DlmSession:
    settings: Settings  # as parsed; "auto" device, dtype and grid stay until `resolved`
    resolved: Settings | None = None  # for this machine, once a benchmark needs it
    selection_error: str | None = None  # raised as a usage error after collection
    results: dict[str, PointMetrics] = field(default_factory=dict)  # test id -> the point's record
    # tokens for token_agreement (shape key) and runtime_agreement (("runtime", *runtime key))
    tokens: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)
    baseline_shapes: set[tuple[Any, ...]] = field(default_factory=set)  # shapes whose baseline strategy runs
    gate_baseline: SavedRun | None = None
    gate_rounds: dict[str, int] = field(default_factory=dict)  # test id -> timed rounds the gate needs
    verdicts: list[Verdict] | None = None
    journal: Journal | None = None
    all_timed: bool = False  # every test that uses pytest-benchmark is a point this plugin times
    partial: str | None = None  # why the session stopped before its selection ended
    controller: Receiver | None = None  # under pytest-xdist, in the controller

    def keep(self, test_id: str, record: PointMetrics) -> None:
        """A point's record, for the summary table, the saved file and the gate."""
        self.results[test_id] = record

    def runs_baseline(self, point: BenchPoint) -> bool:
        """Does the session run the baseline strategy of this point's shape?"""
        return point.shape_key in self.baseline_shapes
