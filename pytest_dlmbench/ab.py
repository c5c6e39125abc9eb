"""Interleaved A/B: a base and a candidate tree measured on one machine in one job, in alternating
invocations, judged on the pairs' differences.

Two runs of the same code made minutes apart on a shared machine drift more than the changes a
gate looks for, so comparing two saved runs can only stay inconclusive there. Run back to back,
base and candidate see the same machine state: pair k runs A then B, pair k + 1 runs B then A
(ABBA, so a steady drift cancels), or a seeded coin orders each pair. Each invocation is a whole
`python -m pytest` in that tree (its own process, so each side imports its own code: the tree goes
first on PYTHONPATH), saving a JSON run; nothing of one invocation is reused by the next.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_dlmbench.store import RunFileError, load_run

ORDERS = ("abba", "random")
SIDES = {"A": "base", "B": "candidate"}


class ABError(ValueError):
    """A side that is neither a folder nor a git ref, or an invocation that failed."""


def schedule(pairs: int, order: str, seed: int = 0) -> list[str]:
    """The sides in running order, two per pair: ABBA (A B, B A, A B, ...) or a seeded coin per pair."""
    if order not in ORDERS:
        raise ABError(f"order {order!r}: must be one of {', '.join(ORDERS)}")
    coin = random.Random(seed)
    firsts = ["A" if k % 2 == 0 else "B" for k in range(pairs)] if order == "abba" else \
        [coin.choice("AB") for _ in range(pairs)]
    return [side for first in firsts for side in (first, "B" if first == "A" else "A")]


def checkout(spec: str, repo: Path, folder: Path) -> Path:
    """`spec` as a tree: an existing folder as it is, else a git ref of `repo` checked out (detached)
    into `folder`."""
    if Path(spec).is_dir():
        return Path(spec).resolve()
    found = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise ABError(f"{spec!r} is neither a folder nor a git ref of {repo}")
    commit = found.stdout.strip()
    added = subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(folder), commit],
                           capture_output=True, text=True)
    if added.returncode != 0:
        raise ABError(f"git worktree add {folder} {spec}: {added.stderr.strip()}")
    return folder


def remove_checkout(repo: Path, folder: Path) -> None:
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(folder)], capture_output=True)


@dataclass(frozen=True)
class Invocation:
    side: str  # "A" (base) or "B" (candidate)
    pair: int  # 1-based
    run: Path  # its --benchmark-json
    log: Path
    seconds: float


def invoke(side: str, pair: int, tree: Path, pytest_args: list[str], out: Path) -> Invocation:
    """One whole pytest run of the points in `tree`; its output goes to a log beside its JSON."""
    run, log = out / f"{side}{pair}.json", out / f"{side}{pair}.log"
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    began = time.perf_counter()
    with log.open("w", encoding="utf8") as stream:
        done = subprocess.run([sys.executable, "-m", "pytest", *pytest_args, f"--benchmark-json={run}",
                               "-p", "no:cacheprovider"], cwd=tree, env=env, stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode not in (0, 1) or not run.exists():  # 1: a failed test; its points still compare
        raise ABError(f"{SIDES[side]} ({side}{pair}) in {tree}: pytest exited {done.returncode} without a usable "
                      f"run; see {log}")
    return Invocation(side, pair, run, log, time.perf_counter() - began)


@dataclass(frozen=True)
class ABRuns:
    base: list[dict[str, dict[str, Any]]]  # per pair: the base invocation's points
    candidate: list[dict[str, dict[str, Any]]]
    invocations: list[Invocation]  # in running order


def run_interleaved(base: Path, candidate: Path, pytest_args: list[str], out: Path, pairs: int, order: str,
                    seed: int = 0, say: Callable[[str], None] = print) -> ABRuns:
    """`pairs` pairs of invocations in `order`, each saved under `out`; progress on `say`."""
    out.mkdir(parents=True, exist_ok=True)
    trees = {"A": base, "B": candidate}
    done: list[Invocation] = []
    for index, side in enumerate(schedule(pairs, order, seed)):
        pair = index // 2 + 1
        invocation = invoke(side, pair, trees[side], pytest_args, out)
        done.append(invocation)
        say(f"pair {pair}/{pairs}: {SIDES[side]} ({side}) in {invocation.seconds:.1f} s")
    try:
        points = {side: [load_run(i.run).points for i in sorted(done, key=lambda i: i.pair) if i.side == side]
                  for side in trees}
    except RunFileError as error:
        raise ABError(str(error)) from None
    return ABRuns(points["A"], points["B"], done)
