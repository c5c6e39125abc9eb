"""Regression verdicts between a baseline run and a new run, noise-aware and family-wise.

Rule: a point regresses on a metric when its change in the bad direction exceeds the threshold
AND, where per-round samples exist (latency and every rate derived from it), a one-sided
Mann-Whitney U test on the rounds finds the new samples worse, with Holm's step-down correction
over every sampled comparison of the run (so gating 30 points at once keeps the chance of any
false alarm at `ALPHA`, not 30 x `ALPHA`). A change beyond the threshold whose rounds are too few
for the test ever to reach the corrected level is "inconclusive": reported, never passed
silently. Inside pytest, a point whose baseline has too few rounds for that is measured to as
many rounds as the test needs (`RoundsPlan`), up to a cap. Metrics without samples (memory,
FLOPs, max_batch_size, ...) are judged on the threshold alone. A status change away from "ok"
(ok -> oom) is a regression; "untimed" (a boundary found but not timed) counts as completed.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, replace
from typing import Any

from tabulate import tabulate

from pytest_dlmbench.core import MEASUREMENT_AXES

ALPHA = 0.05  # the chance, per gated run, of failing any point that did not change
DIRECTIONS = {  # +1: higher is better, -1: lower is better
    "tokens_per_s": +1,
    "tokens_per_forward": +1,
    "max_batch_size": +1,
    "achieved_tflops": +1,
    "achieved_gbps": +1,
    "roofline_fraction": +1,
    "token_agreement": +1,
    "latency_s": -1,
    "ms_per_forward": -1,
    "prefill_ms": -1,
    "nfe": -1,
    "peak_mem_allocated_bytes": -1,
    "peak_mem_reserved_bytes": -1,
    "nvml_peak_used_bytes": -1,
    "peak_rss_bytes": -1,
    "flops_per_token": -1,
    "flops_per_forward": -1,
    "flops_total": -1,
    "bytes_per_forward": -1,
    "bytes_total": -1,
}
# Metrics measured once per timed round: value = constant x latency_s ** exponent, so each round's
# value follows from its latency.
LATENCY_EXPONENT = {"latency_s": 1, "tokens_per_s": -1, "achieved_tflops": -1, "achieved_gbps": -1,
                    "roofline_fraction": -1}
DEFAULT_GATE = ("tokens_per_s:5%",)
# Exit codes of `dlmbench compare`; a pytest session gate exits 1 on a regression, 4 (usage error)
# on an unusable baseline, and NOTHING_COMPARED_PYTEST where no point matched (pytest owns 0-5).
EXIT_REGRESSION, EXIT_BROKEN_INPUT, EXIT_NOTHING_COMPARED, EXIT_CRASH = 1, 2, 3, 4
NOTHING_COMPARED_PYTEST = 6
UNMATCHED = {"new", "missing", "not comparable"}  # verdicts that compare nothing
COMPLETED = {"ok", "untimed"}  # statuses whose metrics are judged


class GateError(ValueError):
    """A gate rule that cannot be parsed, or that names a key no point has."""


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

    @property
    def sampled(self) -> bool:
        """Judged on per-round samples (and so a member of the corrected family)."""
        return self.metric in LATENCY_EXPONENT

    def describe(self) -> str:
        return f"{self.metric}:{self.threshold:g}{'%' if self.relative else ''}"


def gateable_keys(points: dict[str, dict[str, Any]]) -> list[str]:
    """The numeric keys some point has: what a rule can judge."""
    return sorted({key for info in points.values() for key, value in info.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)})


def check_rules(rules: list[GateRule], points: dict[str, dict[str, Any]]) -> None:
    """A rule on a key no point has would print a column of "not comparable" and pass: refuse it."""
    keys = gateable_keys(points)
    for rule in rules:
        if points and rule.metric not in keys:
            raise GateError(f"gate rule {rule.describe()}: no point of the baseline has a numeric {rule.metric!r}; "
                            f"gateable keys: {', '.join(keys) or 'none'}")


def samples(info: dict[str, Any], metric: str) -> list[float] | None:
    """Per-round values of a metric, where the rounds were saved."""
    exponent, value = LATENCY_EXPONENT.get(metric), info.get(metric)
    rounds, latency = info.get("round_latencies_s"), info.get("latency_s")
    if exponent is None or not rounds or not isinstance(value, (int, float)) or not latency:
        return None
    return [value * (float(seconds) / latency) ** exponent for seconds in rounds if seconds > 0]


def smallest_p(base_rounds: int, new_rounds: int) -> float:
    """The smallest one-sided Mann-Whitney p-value these sample sizes allow (all new worse)."""
    return 1 / math.comb(base_rounds + new_rounds, base_rounds)


def family_level(comparisons: int) -> float:
    """The strictest level Holm's correction applies among `comparisons` tests (Bonferroni's)."""
    return ALPHA / max(1, comparisons)


def rounds_needed(base_rounds: int, comparisons: int, cap: int) -> int | None:
    """The fewest rounds of a new run with which the test against `base_rounds` baseline rounds can
    reach the corrected level of `comparisons` tests; None when even `cap` rounds cannot.

    The count follows from the baseline and the family alone, never from the new run's values: a
    rule that kept measuring until a test came out significant would test many times and raise
    the false alarms (results/gate-fwer/)."""
    level = family_level(comparisons)
    return next((rounds for rounds in range(1, cap + 1) if smallest_p(base_rounds, rounds) < level), None)


@dataclass(frozen=True)
class RoundsPlan:
    """The rounds a gated run gives each point that has a baseline: enough for its test to reach
    the corrected level of the whole family (every gated point times every sampled rule)."""

    rounds: dict[str, int]  # test id -> timed rounds (0 where even the cap cannot decide: more would not help)
    capped: list[str]  # points that even `cap` rounds cannot decide
    family: int
    level: float

    @classmethod
    def for_points(cls, baseline: dict[str, dict[str, Any]], test_ids: list[str], rules: list[GateRule],
                   cap: int) -> RoundsPlan:
        gated = [test_id for test_id in test_ids if test_id in baseline]
        family = len(gated) * sum(rule.sampled for rule in rules)
        needed = {test_id: rounds_needed(len(baseline[test_id].get("round_latencies_s") or ()), family, cap)
                  for test_id in gated}
        capped = [test_id for test_id, rounds in needed.items() if rounds is None] if family else []
        return cls({test_id: rounds or 0 for test_id, rounds in needed.items()}, capped, family,
                   family_level(family))


def mann_whitney_worse(base: list[float], new: list[float], direction: int) -> float:
    """The one-sided p-value that `new` is worse than `base`."""
    from scipy.stats import mannwhitneyu

    alternative = "less" if direction > 0 else "greater"
    return float(mannwhitneyu(new, base, alternative=alternative, method="auto").pvalue)


@dataclass(frozen=True)
class Verdict:
    point: str
    metric: str
    baseline: float | str | None
    current: float | str | None
    change: str
    verdict: str  # ok, improved, regression, inconclusive, new, missing, status, not comparable
    sampled: bool = False  # both runs had per-round samples: a member of the corrected family
    p_value: float | None = None  # where the rounds were tested (a change beyond the threshold)
    smallest_p: float | None = None  # the smallest p-value these rounds allow

    @property
    def fails(self) -> bool:
        return self.verdict == "regression"


PENDING = "pending"  # beyond the threshold with samples: the family decides


def judge(point: str, rule: GateRule, base: dict[str, Any], new: dict[str, Any]) -> Verdict:
    """One rule on one point; a change beyond the threshold with samples stays `PENDING`."""
    old, current = base.get(rule.metric), new.get(rule.metric)
    if not isinstance(old, (int, float)) or not isinstance(current, (int, float)):
        return Verdict(point, rule.metric, old, current, "-", "not comparable")
    better = (current - old) * rule.direction  # > 0: the new run is better
    if rule.relative:
        better = better / abs(old) * 100 if old else math.copysign(math.inf, better) if better else 0.0
    change = f"{(current - old) / abs(old) * 100:+.1f}%" if old else f"{current - old:+g}"
    base_samples, new_samples = samples(base, rule.metric), samples(new, rule.metric)
    sampled = bool(base_samples) and bool(new_samples)
    if better > rule.threshold:
        return Verdict(point, rule.metric, old, current, change, "improved", sampled)
    if better >= -rule.threshold:
        return Verdict(point, rule.metric, old, current, change, "ok", sampled)
    if not sampled:  # no rounds to test: the threshold decides
        return Verdict(point, rule.metric, old, current, change, "regression")
    assert base_samples is not None and new_samples is not None
    return Verdict(point, rule.metric, old, current, change, PENDING, True,
                   mann_whitney_worse(base_samples, new_samples, rule.direction),
                   smallest_p(len(base_samples), len(new_samples)))


def holm(verdicts: list[Verdict]) -> list[Verdict]:
    """Decide the pending verdicts with Holm's step-down correction over every sampled comparison."""
    family = sum(verdict.sampled for verdict in verdicts)
    pending = [i for i, v in enumerate(verdicts) if v.verdict == PENDING]
    order = sorted(pending, key=lambda i: verdicts[i].p_value or 0.0)  # a pending verdict has its p-value
    decided, rejecting = list(verdicts), True
    for rank, index in enumerate(order):
        verdict = verdicts[index]
        assert verdict.p_value is not None and verdict.smallest_p is not None
        level = ALPHA / (family - rank)
        reachable = verdict.smallest_p < level  # (tied rounds can give an approximate p below the exact minimum)
        rejecting = rejecting and reachable and verdict.p_value < level
        outcome = "regression" if rejecting else "ok" if reachable else "inconclusive"
        note = " too few rounds" if outcome == "inconclusive" else ""
        decided[index] = replace(verdict, verdict=outcome,
                                 change=f"{verdict.change} (p={verdict.p_value:.2g}, level {level:.2g}{note})")
    return decided


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
        changed = next((axis for axis, saved_before in MEASUREMENT_AXES.items()
                        if base[point].get(axis, saved_before) != new[point].get(axis, saved_before)), None)
        if changed is not None:  # a runtime or fidelity change is not a code change: nothing to judge
            old, now = (run[point].get(changed, MEASUREMENT_AXES[changed]) for run in (base, new))
            verdicts.append(Verdict(point, changed, old, now, f"{old} -> {now}", "not comparable"))
            continue
        verdicts += [judge(point, rule, base[point], new[point]) for rule in rules]
    return holm(verdicts)


def compared_points(verdicts: list[Verdict]) -> int:
    """How many points both runs have and a rule could judge: 0 means the gate compared nothing
    (every point new, missing or measured another way), which must not read as a pass."""
    return len({verdict.point for verdict in verdicts if verdict.verdict not in UNMATCHED})


def verdict_table(verdicts: list[Verdict], tablefmt: str = "simple") -> str:
    rows = [(v.point, v.metric, v.baseline, v.current, v.change, v.verdict) for v in verdicts]
    return tabulate(rows, headers=("point", "metric", "baseline", "current", "change", "verdict"), floatfmt=".4g",
                    missingval="-", tablefmt=tablefmt)


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


def noise(first: dict[str, dict[str, Any]], second: dict[str, dict[str, Any]],
          metric: str = "tokens_per_s") -> list[Spread]:
    spreads = []
    for point in sorted(first.keys() & second.keys()):
        a, b = first[point].get(metric), second[point].get(metric)
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not a:
            continue
        within = [spread for spread in (_round_spread(first[point], metric), _round_spread(second[point], metric))
                  if spread is not None]
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


# ---- interleaved A/B: the same points measured in alternating invocations on one machine ----------


def paired_worse(base: list[float], new: list[float], direction: int) -> float:
    """The one-sided p-value of a paired t-test that `new` is worse than `base`, pair by pair, on
    log ratios (a slowdown by a factor counts alike at every speed); 1 below two pairs."""
    from scipy.stats import ttest_1samp

    if len(base) < 2:
        return 1.0
    gains = [direction * math.log(b / a) for a, b in zip(base, new)]  # > 0: the pair's new run is better
    if max(gains) == min(gains):  # no spread: the sign decides
        return 0.0 if gains[0] < 0 else 1.0
    return float(ttest_1samp(gains, 0.0, alternative="less").pvalue)


def paired_judge(point: str, rule: GateRule, base: list[dict[str, Any]], new: list[dict[str, Any]]) -> Verdict:
    """One rule on one point over its pairs of runs (base[k] and new[k] ran back to back): the
    change is the geometric mean of the pairs' ratios; beyond the threshold, a latency-derived
    metric waits for the family (`holm`), another fails on the threshold alone."""
    def positive(info: dict[str, Any]) -> float | None:
        value = info.get(rule.metric)
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    olds_or_none, news_or_none = [positive(info) for info in base], [positive(info) for info in new]
    olds, news = [v for v in olds_or_none if v is not None], [v for v in news_or_none if v is not None]
    if not olds or len(olds) < len(base) or len(news) < len(new):
        return Verdict(point, rule.metric, base[0].get(rule.metric), new[0].get(rule.metric), "-", "not comparable")
    pairs = list(zip(olds, news))
    ratio = math.exp(sum(math.log(b / a) for a, b in zip(olds, news)) / len(pairs))
    old, current = statistics.median(olds), statistics.median(news)
    better = rule.direction * ((ratio - 1) * 100 if rule.relative else current - old)
    change = f"{(ratio - 1) * 100:+.1f}% over {len(pairs)} pairs"
    sampled = rule.sampled
    if better > rule.threshold and sampled:  # an improvement is claimed where the pairs show it
        p_better = paired_worse(news, olds, rule.direction)
        return Verdict(point, rule.metric, old, current, f"{change} (p={p_better:.2g})",
                       "improved" if p_better < ALPHA else "ok", sampled)
    if better > rule.threshold:
        return Verdict(point, rule.metric, old, current, change, "improved", sampled)
    if better >= -rule.threshold:
        return Verdict(point, rule.metric, old, current, change, "ok", sampled)
    if not sampled:
        return Verdict(point, rule.metric, old, current, change, "regression")
    p_value = paired_worse(olds, news, rule.direction)
    return Verdict(point, rule.metric, old, current, change, PENDING, True, p_value,
                   0.0 if len(pairs) >= 2 else 1.0)


def paired_compare(base: list[dict[str, dict[str, Any]]], new: list[dict[str, dict[str, Any]]],
                   rules: list[GateRule]) -> list[Verdict]:
    """Every point of either side judged over the pairs (base[k], new[k]) of runs; a point must
    have finished in every run of a side to be judged."""
    verdicts = []
    for point in sorted({p for run in base + new for p in run}):
        sides = [[run.get(point) for run in runs] for runs in (base, new)]
        if not all(sides[0]):
            verdicts.append(Verdict(point, "-", None, "present", "-", "new"))
            continue
        if not all(sides[1]):
            verdicts.append(Verdict(point, "-", "present", None, "-", "missing"))
            continue
        olds, news = ([info for info in side if info is not None] for side in sides)
        old_statuses, new_statuses = ({info.get("status", "ok") for info in infos} for infos in (olds, news))
        if not old_statuses | new_statuses <= COMPLETED:
            old_status, new_status = ",".join(sorted(old_statuses)), ",".join(sorted(new_statuses))
            verdicts.append(Verdict(point, "status", old_status, new_status, f"{old_status} -> {new_status}",
                                    "regression" if old_statuses <= COMPLETED else "status"))
            continue
        verdicts += [paired_judge(point, rule, olds, news) for rule in rules]
    return holm(verdicts)
