"""pytest-benchmark beyond its public hooks: its session's list of timed benchmarks, its file
storage's save, its JSON writer and machine id, and its switch-off under xdist."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.utils import get_machine_id, safe_dumps

XDIST_WARNING = "Benchmarks are automatically disabled because xdist"


def dumps(value: Any, **kwargs: Any) -> str:
    """JSON as pytest-benchmark saves it: an object it cannot write (a parameter) by its repr."""
    return safe_dumps(value, **kwargs)


def as_saved(value: Any) -> Any:
    """`value` as pytest-benchmark's file holds it: plain JSON."""
    return json.loads(dumps(value))


def machine_id() -> str:
    """The folder name pytest-benchmark's file storage uses for this machine."""
    return get_machine_id()


def silence_xdist_warning() -> None:
    """pytest-benchmark warns under xdist that it times nothing: untrue where the points time themselves."""
    warnings.filterwarnings("ignore", XDIST_WARNING)


def enable_in_worker(benchmark: Any) -> None:
    """Undo pytest-benchmark's own switch-off of a fixture in an xdist worker."""
    benchmark.disabled = False


def timed_entry(benchmark: Any) -> dict[str, Any] | None:
    """The fixture's entry as pytest-benchmark saves it; None where it timed nothing or failed."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(stats, "has_error", False):
        return None
    return stats.as_dict(include_data=True)


class _SavedEvenIfEmpty(list):
    """An empty benchmark list that pytest-benchmark still saves (it skips saving an empty one)."""

    def __bool__(self) -> bool:
        return True


class SavedEntry:
    """An entry timed elsewhere (an xdist worker), in the shape pytest-benchmark's saving and
    display read from its own benchmarks."""

    has_error = False

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry
        self.fullname = entry["fullname"]

    def __bool__(self) -> bool:
        return True

    def __getitem__(self, key: str) -> Any:  # a statistic, else a label (as --benchmark-compare-fail reads)
        return self.entry["stats"][key] if key in self.entry["stats"] else self.entry[key]

    def as_dict(self, include_data: bool = True, flat: bool = False, stats: bool = True,
                cprofile: Any = None) -> dict[str, Any]:
        labels = {key: value for key, value in self.entry.items() if key != "stats"}
        numbers = {key: value for key, value in self.entry["stats"].items() if include_data or key != "data"}
        if not stats:
            return labels
        return labels | numbers if flat else labels | {"stats": numbers}


def settle_saved_list(config: pytest.Config, *, drop_unlabelled: bool, received: Iterable[dict[str, Any]],
                      save_if_empty: bool) -> None:
    """Before pytest-benchmark saves: drop benchmarks with no labels (a point cut off mid-measurement),
    add the entries workers timed, and save the file even with no benchmark when `save_if_empty`
    (the points that failed are results too). Nothing to do where pytest-benchmark is off."""
    session = getattr(config, "_benchmarksession", None)
    if session is None:
        return
    if drop_unlabelled:
        session.benchmarks[:] = [bench for bench in session.benchmarks if bench.extra_info]
    session.benchmarks.extend(SavedEntry(entry) for entry in received)
    if not session.benchmarks and save_if_empty:
        session.benchmarks = _SavedEvenIfEmpty()


def replace_file_save(write: Callable[[Path, dict[str, Any], str], Path]) -> None:
    """pytest-benchmark's file storage saves through `write(folder, document, name)`, which
    returns the path written; once per process."""
    from pytest_benchmark.storage.file import FileStorage

    if getattr(FileStorage.save, "dlmbench_replaced", False):
        return

    def save(self: FileStorage, output_json: dict[str, Any], save: str) -> None:
        path = write(self.get(f"{save}.json").parent, output_json, save)
        self.logger.info(f"Saved benchmark data in: {path}")

    save.dlmbench_replaced = True  # type: ignore[attr-defined]
    FileStorage.save = save  # type: ignore[method-assign]


def file_save_replaced() -> bool:
    from pytest_benchmark.storage.file import FileStorage

    return getattr(FileStorage.save, "dlmbench_replaced", False)
