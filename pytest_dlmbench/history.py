"""A metric of one point over many saved runs, in the order they were saved, with its change points.

Change points come from binary segmentation: in a stretch of runs, every split with at least two
runs on each side is a candidate; the split whose two sides differ most significantly (a two-sided
Mann-Whitney test on the runs' values), by more than the threshold between their medians, is a
change point when its p-value clears ALPHA over the candidates tried (Bonferroni); then each side
is searched again. A change needs about six runs on each side to be found, and a dip that
recovers within the stretch can hide from every single split. A run is one sample: rounds within
a run share its machine state, so pooling them would take a machine's drift for a code change.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from pytest_dlmbench.gate import ALPHA
from pytest_dlmbench.store import RunFileError, load_run

RUN_SUFFIXES = (".json", ".jsonl", ".json.xz", ".json.gz", ".jsonl.xz", ".jsonl.gz")


@dataclass(frozen=True)
class HistoryPoint:
    run: str  # the file
    commit: str | None
    saved_at: str | None
    value: float | None  # None: the point is absent from the run, did not finish, or lacks the metric


@dataclass(frozen=True)
class ChangePoint:
    index: int  # the first run after the change
    change_pct: float  # between the medians of the runs before and after (within the searched stretch)
    p_value: float


def run_files(paths: list[str]) -> list[Path]:
    """The files named, and the run files inside any folder named (e.g. `.benchmarks/MACHINE`)."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(RUN_SUFFIXES))
        elif path.exists():
            files.append(path)
        else:
            raise RunFileError(f"{name}: no such file or folder")
    if not files:
        raise RunFileError(f"no run files in {', '.join(paths)}")
    return files


def history(paths: list[str], point: str, metric: str) -> list[HistoryPoint]:
    """The point's metric in every run, oldest first (by saved time; runs without one keep their order)."""
    runs = [load_run(path) for path in run_files(paths)]
    if not any(point in run.points for run in runs):
        known = sorted({p for run in runs for p in run.points})
        raise RunFileError(f"no run has point {point!r}; points: {', '.join(known[:20])}"
                           + (" ..." if len(known) > 20 else ""))
    ordered = sorted(enumerate(runs), key=lambda item: (item[1].saved_at or "", item[0]))
    result = []
    for _, run in ordered:
        info = run.points.get(point, {})
        value = info.get(metric) if info.get("status", "ok") in ("ok", "untimed") else None
        result.append(HistoryPoint(run.path, run.commit, run.saved_at,
                                   float(value) if isinstance(value, (int, float)) else None))
    return result


def change_points(values: list[float], threshold_pct: float, alpha: float = ALPHA) -> list[ChangePoint]:
    """Binary segmentation of `values` (see the module docstring), sorted by index."""
    from scipy.stats import mannwhitneyu

    found: list[ChangePoint] = []
    stretches = [(0, len(values))]
    while stretches:
        start, stop = stretches.pop()
        best: ChangePoint | None = None
        splits = range(start + 2, stop - 1)
        for split in splits:
            before, after = values[start:split], values[split:stop]
            median_before = statistics.median(before)
            change = (statistics.median(after) - median_before) / abs(median_before) * 100 if median_before else 0.0
            if abs(change) <= threshold_pct:
                continue
            p_value = float(mannwhitneyu(before, after, alternative="two-sided").pvalue)
            if best is None or (p_value, -abs(change)) < (best.p_value, -abs(best.change_pct)):
                best = ChangePoint(split, change, p_value)
        if best is not None and best.p_value < alpha / max(1, len(splits)):
            found.append(best)
            stretches += [(start, best.index), (best.index, stop)]
    return sorted(found, key=lambda change: change.index)


def history_table(points: list[HistoryPoint], changes: list[ChangePoint], tablefmt: str = "simple") -> str:
    marks = {change.index: f"change point: {change.change_pct:+.1f}% (p={change.p_value:.2g})" for change in changes}
    measured = [i for i, p in enumerate(points) if p.value is not None]
    rows = []
    for index, point in enumerate(points):
        earlier = [i for i in measured if i < index]
        previous = points[earlier[-1]].value if earlier else None
        step = "-" if point.value is None or not previous else f"{(point.value - previous) / previous * 100:+.1f}%"
        rows.append((Path(point.run).name, point.saved_at or "-", (point.commit or "-")[:12], point.value, step,
                     marks.get(measured.index(index), "") if index in measured else "not measured"))
    return tabulate(rows, headers=("run", "saved", "commit", "value", "vs previous", ""), floatfmt=".4g",
                    missingval="-", tablefmt=tablefmt)


def plot_history(points: list[HistoryPoint], changes: list[ChangePoint], title: str, path: str | Path) -> None:
    """The metric over the runs, each change point a vertical line before its first run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [(i, p) for i, p in enumerate(points) if p.value is not None]
    figure, axis = plt.subplots(figsize=(max(6.0, 0.5 * len(points)), 4))
    axis.plot([i for i, _ in measured], [p.value or 0.0 for _, p in measured], marker="o")
    for change in changes:
        axis.axvline(measured[change.index][0] - 0.5, color="red", linestyle="--",
                     label=f"{change.change_pct:+.1f}%")
    axis.set_xticks(range(len(points)), [(p.commit or Path(p.run).stem)[:8] for p in points], rotation=60,
                    fontsize=7)
    axis.set_title(title)
    if changes:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
