"""Benchmarks over pytest-xdist workers, one GPU each, saved as one run.

Workers measure; the controller keeps. pytest-benchmark switches its timing off under xdist: a
worker switches each point's fixture back on (so a point is timed as in one process), never
saves a file, and sends each point's record and pytest-benchmark entry to the controller on the
test's report. The controller holds them as if it had run them: the session gate, the journal,
the terminal table and --benchmark-save/--benchmark-json read them there. A worker that dies (an
OOM kill, a CUDA fault) loses the point it was running: xdist reports that test as crashed, and
the point is saved as `error` with the reason.

Each worker owns one GPU (`--dlm-devices`), hidden behind CUDA_VISIBLE_DEVICES so that it is the
worker's `cuda`; records and the saved machine info name it as the controller numbers them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dlmbench.integrations.xdist import worker_input, worker_of

if TYPE_CHECKING:
    from pytest_dlmbench.core import PointMetrics, Settings

GPU_KEY = "dlmbench_gpu"  # workerinput: the GPU the worker owns, as the controller numbers them
POINT_ATTR = "dlmbench_point"  # a worker's setup report: the point its test runs (kept in case the worker dies)
RESULT_ATTR = "dlmbench_result"  # a worker's call report: the point's record and saved entry
# pytest-benchmark options whose files and comparisons only the controller makes, and their "off" values.
CONTROLLER_ONLY = {"benchmark_save": None, "benchmark_autosave": False, "benchmark_json": None,
                   "benchmark_compare": None, "benchmark_compare_fail": None, "benchmark_histogram": None}


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def is_controller(config: pytest.Config) -> bool:
    """This process hands the tests to pytest-xdist workers and runs none itself."""
    return not is_worker(config) and config.getoption("dist", "no") != "no"


def worker_count(config: pytest.Config) -> int:
    """How many workers run points at once (1 in one process)."""
    return int(worker_input(config)["workercount"]) if is_worker(config) else 1


def devices_text(devices: tuple[int, ...] | str) -> str:
    return devices if isinstance(devices, str) else ",".join(map(str, devices))


def gpu_slots(devices: tuple[int, ...] | str, visible: int, workers: int | None) -> tuple[int, ...]:
    """One GPU per worker slot from --dlm-devices ("all": every visible GPU); a ValueError says
    what is wrong: no GPU, an index not visible, or more workers than slots."""
    text = devices_text(devices)
    if visible == 0:
        raise ValueError(f"--dlm-devices={text}: no CUDA device is visible on this machine")
    slots = tuple(range(visible)) if isinstance(devices, str) else devices  # a string is "all"
    unseen = sorted({index for index in slots if index >= visible})
    if unseen:
        raise ValueError(f"--dlm-devices={text}: no CUDA device {', '.join(map(str, unseen))}; this machine has "
                         f"{visible} (0-{visible - 1})")
    if workers is not None and workers > len(slots):
        raise ValueError(f"-n {workers} with --dlm-devices={text}: {workers} workers for {len(slots)} GPU(s); "
                         "start fewer workers, or list a GPU more than once to run two workers on it")
    return slots


class GpuSlots:
    """The controller's GPUs: a starting worker takes a free slot, a worker that ends gives its slot
    back (so a worker that replaces a crashed one gets that GPU)."""

    def __init__(self, slots: tuple[int, ...]) -> None:
        self.slots = slots
        self.holders: dict[str, int] = {}  # live worker -> slot
        self.placement: dict[str, int] = {}  # every worker that ran -> its GPU

    def take(self, worker: str) -> int:
        free = [slot for slot in range(len(self.slots)) if slot not in self.holders.values()]
        if not free:
            raise RuntimeError(f"no free GPU for pytest-xdist worker {worker}: every --dlm-devices slot is taken")
        self.holders[worker] = free[0]
        self.placement[worker] = self.slots[free[0]]
        return self.slots[free[0]]

    def give_back(self, worker: str) -> None:
        self.holders.pop(worker, None)


def worker_settings(config: pytest.Config, settings: Settings) -> Settings:
    """A worker's settings: its name and GPU (made its only visible CUDA device). pytest-benchmark is
    told not to save or compare here: the controller does."""
    for option, off in CONTROLLER_ONLY.items():
        setattr(config.option, option, off)
    worker, gpu = worker_input(config)["workerid"], worker_input(config).get(GPU_KEY)
    if gpu is None:
        return dataclasses.replace(settings, worker=worker)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[gpu].strip() if visible else str(gpu)
    return dataclasses.replace(settings, worker=worker, gpu_index=gpu, device="cuda")


def refuse_shared_gpu(config: pytest.Config, settings: Settings) -> None:
    """Workers without --dlm-devices would all run on the same GPU and time each other's work."""
    workers = worker_count(config)
    if workers > 1 and settings.gpu_index is not None and worker_input(config).get(GPU_KEY) is None:
        raise pytest.UsageError(
            f"{workers} pytest-xdist workers would share {settings.device}: pass --dlm-devices=all (one GPU per "
            "worker) or a list of GPUs; list a GPU more than once to run two workers on it")


def timed_in_worker(config: pytest.Config) -> bool:
    """A worker times its points itself unless the user turned pytest-benchmark off."""
    return is_worker(config) and not (config.getoption("benchmark_disable")
                                      and not config.getoption("benchmark_enable"))


@dataclass(frozen=True)
class Received:
    """One point as the controller keeps it."""

    test_id: str
    record: dict[str, Any]  # PointMetrics.to_extra_info()
    saved: tuple[str, dict[str, Any]] | None  # (list key, entry) for the saved file and the journal


class Controller:
    """The controller's side of a distributed session (a plugin of its own): GPUs for the workers,
    their points handed to `keep`, the pytest-benchmark entries kept for saving."""

    def __init__(self, settings: Callable[[], Settings], slots: GpuSlots | None,
                 keep: Callable[[Received], None]) -> None:
        self.settings = settings  # the session's resolved settings, when first needed
        self.slots = slots
        self.keep = keep
        self.benchmarks: list[dict[str, Any]] = []  # entries the workers timed, as saved
        self.started: dict[str, dict[str, Any]] = {}  # test id -> its point, while a worker runs it
        self.down: dict[str, str] = {}  # worker -> why it went down

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.slots is not None:
            node.workerinput[GPU_KEY] = self.slots.take(node.gateway.id)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        if self.slots is not None:
            self.slots.give_back(node.gateway.id)
        if error:
            self.down[node.gateway.id] = str(error)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        received = self.receive(report)
        if received is not None:
            self.keep(received)

    def placement(self) -> dict[str, int] | None:
        return dict(self.slots.placement) if self.slots is not None else None

    def receive(self, report: pytest.TestReport) -> Received | None:
        """The point a worker's report carries, or the point a crashed worker was running."""
        carried = vars(report)
        if POINT_ATTR in carried:
            self.started[report.nodeid] = carried[POINT_ATTR]
        if RESULT_ATTR in carried:
            self.started.pop(report.nodeid, None)
            saved = carried[RESULT_ATTR]["saved"]
            if saved is not None and saved[0] == "benchmarks":
                self.benchmarks.append(saved[1])
            return Received(report.nodeid, carried[RESULT_ATTR]["record"], None if saved is None else tuple(saved))
        return None

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        """A worker died running `crashitem`: its point is saved as an error."""
        if crashitem in self.started:
            self.keep(self._crashed(report))

    def _crashed(self, report: pytest.TestReport) -> Received:
        from pytest_dlmbench.core import UNDESCRIBED, BenchPoint, PointLabels
        from pytest_dlmbench.record import failed_record
        from pytest_dlmbench.store import FAILED_KEY, failed_entry

        settings = self.settings()
        point = BenchPoint(**self.started.pop(report.nodeid))
        worker = worker_of(report)
        gpu = self.slots.placement.get(worker) if self.slots is not None and worker else None
        reason = self.down.get(worker or "")
        message = " ".join(filter(None, (str(report.longrepr), f"on GPU {gpu}" if gpu is not None else None,
                                         f"({reason})" if reason else None)))
        labels = PointLabels.of(point, settings, worker=worker, gpu_index=gpu)
        record = failed_record(labels, UNDESCRIBED, "error", message).to_extra_info()
        return Received(report.nodeid, record, (FAILED_KEY, failed_entry(report.nodeid, record)))


def record_of(received: Received) -> PointMetrics:
    from pytest_dlmbench.core import PointMetrics
    from pytest_dlmbench.roofline import ROOFLINE_KEYS

    return PointMetrics.from_extra_info(received.record, ROOFLINE_KEYS)
