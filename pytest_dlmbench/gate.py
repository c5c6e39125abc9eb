"""Regression verdicts between a baseline run and a new run, noise-aware.

Rule: a point regresses on a metric when its change in the bad direction exceeds the threshold
AND, where per-round samples exist (tokens_per_s, latency_s), a one-sided Mann-Whitney U test
on the rounds finds the new samples worse at significance `ALPHA`. When the rounds are too few
for the test to ever reach `ALPHA` (e.g. 3 against 3), a change beyond the threshold is
"inconclusive": reported, never passed silently, not failed. Metrics without samples (memory,
max_batch_size, ...) are judged on the threshold alone. A status change away from "ok"
(ok -> oom) is a regression; "untimed" (a boundary found but not timed) counts as completed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

ALPHA = 0.05
DIRECTIONS = {  # +1: higher is better, -1: lower is better
    "tokens_per_s": +1,
    "tokens_per_forward": +1,
    "max_batch_size": +1,
    "latency_s": -1,
    "ms_per_forward": -1,
    "prefill_ms": -1,
    "nfe": -1,
    "peak_mem_allocated_bytes": -1,
    "peak_mem_reserved_bytes": -1,
    "nvml_peak_used_bytes": -1,
    "peak_rss_bytes": -1,
}
DEFAULT_GATE = ("tokens_per_s:5%",)
COMPLETED = {"ok", "untimed"}  # statuses whose metrics are judged


class GateError(ValueError):
    """A gate rule that cannot be parsed."""


@dataclass(frozen=True)
class GateRule:
    metric: str
    threshold: float
    relative: bool  # threshold in percent of the baseline value, else in the metric's units
    direction: int  # +1 higher is better, -1 lower is better

    @classmethod
    def parse(cls, text: str) -> GateRule:
        """METRIC:THRESHOLD[:higher|lower], THRESHOLD like 5% or 0.5."""
        match = re.fullmatch(r"(\w+):([0-9]*\.?[0-9]+)(%?)(?::(higher|lower))?", text.strip())
        if not match:
            raise GateError(f"{text!r} is not METRIC:THRESHOLD[%][:higher|lower], e.g. tokens_per_s:5%")
        metric, number, percent, declared = match.groups()
        if declared is None and metric not in DIRECTIONS:
            raise GateError(f"{text!r}: metric {metric!r} has no known direction; add :higher or :lower "
                            f"(known: {', '.join(DIRECTIONS)})")
        direction = {"higher": +1, "lower": -1}[declared] if declared else DIRECTIONS[metric]
        return cls(metric, float(number), bool(percent), direction)

    def describe(self) -> str:
        return f"{self.metric}:{self.threshold:g}{'%' if self.relative else ''}"


def samples(info: dict[str, Any], metric: str) -> list[float] | None:
    """Per-round values of a metric, where the rounds were saved."""
    rounds = info.get("round_latencies_s")
    if not rounds or metric not in ("tokens_per_s", "latency_s"):
        return None
    if metric == "latency_s":
        return [float(value) for value in rounds]
    return [info["tokens_generated"] / value for value in rounds if value > 0]


def smallest_p(base_rounds: int, new_rounds: int) -> float:
    """The smallest one-sided Mann-Whitney p-value these sample sizes allow (all new worse)."""
    return 1 / math.comb(base_rounds + new_rounds, base_rounds)


def rounds_to_judge() -> int:
    """The fewest rounds a side with which the test can reach `ALPHA` (4 at 0.05)."""
    return next(rounds for rounds in range(1, 100) if smallest_p(rounds, rounds) < ALPHA)


def mann_whitney_worse(base: list[float], new: list[float], direction: int) -> tuple[float, float]:
    """(p-value that `new` is worse than `base`, the smallest p-value these sample sizes allow)."""
    from scipy.stats import mannwhitneyu

    alternative = "less" if direction > 0 else "greater"
    p_value = float(mannwhitneyu(new, base, alternative=alternative, method="auto").pvalue)
    return p_value, smallest_p(len(base), len(new))


@dataclass(frozen=True)
class Verdict:
    point: str
    metric: str
    baseline: float | str | None
    current: float | str | None
    change: str
    verdict: str  # ok, improved, regression, inconclusive, new, missing, status

    @property
    def fails(self) -> bool:
        return self.verdict == "regression"


def _judge(point: str, rule: GateRule, base: dict[str, Any], new: dict[str, Any]) -> Verdict:
    old, current = base.get(rule.metric), new.get(rule.metric)
    if not isinstance(old, (int, float)) or not isinstance(current, (int, float)):
        return Verdict(point, rule.metric, old, current, "-", "not comparable")
    better = (current - old) * rule.direction  # > 0: the new run is better
    if rule.relative:
        better = better / abs(old) * 100 if old else math.copysign(math.inf, better) if better else 0.0
    change = f"{(current - old) / abs(old) * 100:+.1f}%" if old else f"{current - old:+g}"
    if better > rule.threshold:
        return Verdict(point, rule.metric, old, current, change, "improved")
    if better >= -rule.threshold:
        return Verdict(point, rule.metric, old, current, change, "ok")
    base_samples, new_samples = samples(base, rule.metric), samples(new, rule.metric)
    if base_samples is None or new_samples is None:  # no rounds to test: the threshold decides
        return Verdict(point, rule.metric, old, current, change, "regression")
    p_value, smallest = mann_whitney_worse(base_samples, new_samples, rule.direction)
    if smallest >= ALPHA:
        return Verdict(point, rule.metric, old, current, f"{change} (too few rounds)", "inconclusive")
    verdict = "regression" if p_value < ALPHA else "ok"
    return Verdict(point, rule.metric, old, current, f"{change} (p={p_value:.3f})", verdict)


def compare(base: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], rules: list[GateRule]) -> list[Verdict]:
    """Every point of either run judged by every rule, matched by test id."""
    verdicts = []
    for point in sorted(base.keys() | new.keys()):
        if point not in new:
            verdicts.append(Verdict(point, "-", "present", None, "-", "missing"))
            continue
        if point not in base:
            verdicts.append(Verdict(point, "-", None, "present", "-", "new"))
            continue
        old_status, new_status = base[point].get("status", "ok"), new[point].get("status", "ok")
        if old_status != new_status and not {old_status, new_status} <= COMPLETED:
            verdict = ("regression" if old_status in COMPLETED else "improved" if new_status in COMPLETED
                       else "status")
            verdicts.append(Verdict(point, "status", old_status, new_status, f"{old_status} -> {new_status}", verdict))
            continue
        if new_status not in COMPLETED:
            continue
        verdicts += [_judge(point, rule, base[point], new[point]) for rule in rules]
    return verdicts


def verdict_table(verdicts: list[Verdict]) -> str:
    rows = [(v.point, v.metric, v.baseline, v.current, v.change, v.verdict) for v in verdicts]
    return tabulate(rows, headers=("point", "metric", "baseline", "current", "change", "verdict"), floatfmt=".4g",
                    missingval="-")


@dataclass(frozen=True)
class Spread:
    """How far two runs of the same code disagree on one point (an A/A test)."""

    point: str
    first: float
    second: float
    change_pct: float  # (second - first) / first
    round_spread_pct: float | None  # widest (max - min) / median of the rounds within either run


def _round_spread(info: dict[str, Any], metric: str) -> float | None:
    values = samples(info, metric)
    if not values or len(values) < 2:
        return None
    values = sorted(values)
    return (values[-1] - values[0]) / values[len(values) // 2] * 100


def noise(first: dict[str, dict[str, Any]], second: dict[str, dict[str, Any]], metric: str = "tokens_per_s") -> list[Spread]:
    spreads = []
    for point in sorted(first.keys() & second.keys()):
        a, b = first[point].get(metric), second[point].get(metric)
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not a:
            continue
        within = [s for s in (_round_spread(first[point], metric), _round_spread(second[point], metric)) if s is not None]
        spreads.append(Spread(point, a, b, (b - a) / a * 100, max(within) if within else None))
    return spreads


def recommended_threshold(spreads: list[Spread]) -> float:
    """The largest A/A change with a 1.5x margin, rounded up to a whole percent (at least 1%)."""
    largest = max((abs(s.change_pct) for s in spreads), default=0.0)
    return float(max(1, math.ceil(largest * 1.5)))


def noise_table(spreads: list[Spread]) -> str:
    rows = [(s.point, s.first, s.second, f"{s.change_pct:+.2f}%",
             "-" if s.round_spread_pct is None else f"{s.round_spread_pct:.2f}%") for s in spreads]
    return tabulate(rows, headers=("point", "run 1", "run 2", "change", "round spread"), floatfmt=".4g")
