"""False alarms and power of the gate's rule when many points are gated at once (Monte Carlo).

Each simulated session gates `--points` points at tokens_per_s:5%. Round latencies are iid
log-normal with spread sigma around 1.0 (baseline, `--base-rounds` rounds) and around `slowdown`
(new run). The new run takes `--rounds` rounds ("fixed"), or, as inside pytest, at least as many
as `rounds_needed` says the test against the baseline's rounds needs, up to `--max-rounds`
("gated"). Prints, per sigma and slowdown, the share of sessions with at least one regression
verdict (the family-wise false-alarm rate when slowdown = 1) and the share of slowed points that
failed (power).

    python results/gate-fwer/simulate.py [--sessions 400] [--points 30] [--base-rounds 6] [--rounds 6]
"""

from __future__ import annotations

import argparse
import random

from tabulate import tabulate

from pytest_dlmbench.gate import GateRule, compare, rounds_needed

RULES = [GateRule.parse("tokens_per_s:5%")]


def info(latencies: list[float]) -> dict[str, object]:
    median = sorted(latencies)[len(latencies) // 2] if len(latencies) % 2 else sum(
        sorted(latencies)[len(latencies) // 2 - 1: len(latencies) // 2 + 1]) / 2
    return {"round_latencies_s": latencies, "latency_s": median, "tokens_per_s": 100 / median, "status": "ok"}


def session(rng: random.Random, points: int, sigma: float, slowdown: float, base_rounds: int, rounds: int) -> int:
    """Regression verdicts of one gated session."""
    draw = lambda centre: centre * rng.lognormvariate(0.0, sigma)  # noqa: E731
    base = {f"p{i}": info([draw(1.0) for _ in range(base_rounds)]) for i in range(points)}
    new = {name: info([draw(slowdown) for _ in range(rounds)]) for name in base}
    return sum(v.fails for v in compare(base, new, RULES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--base-rounds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--max-rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    needed = rounds_needed(args.base_rounds, args.points, args.max_rounds) or args.max_rounds
    rows = []
    for label, rounds in (("fixed", args.rounds), ("gated", max(args.rounds, needed))):
        for slowdown in (1.0, 1.10, 2.0):
            for sigma in (0.01, 0.05, 0.20):
                rng = random.Random(args.seed)
                failed = [session(rng, args.points, sigma, slowdown, args.base_rounds, rounds)
                          for _ in range(args.sessions)]
                rows.append((label, rounds, f"{slowdown:g}x", f"{sigma:.0%}",
                             f"{sum(n > 0 for n in failed) / args.sessions:.1%}" if slowdown == 1.0 else "-",
                             f"{sum(failed) / (args.sessions * args.points):.1%}" if slowdown != 1.0 else "-"))
    print(f"{args.sessions} sessions of {args.points} points, baseline {args.base_rounds} rounds, tokens_per_s:5%, "
          "Holm at alpha 0.05")
    print(tabulate(rows, headers=("new run", "rounds", "slowdown", "round spread (sigma)",
                                  "sessions with a false alarm", "slowed points failed")))


if __name__ == "__main__":
    main()
