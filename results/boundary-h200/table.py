"""The boundary table of the README beside this file, from the runs in it (run from the repository
root: `python results/boundary-h200/table.py [FOLDER]`): each boundary's measured max batch beside the
memory model's, and the measured peak at that batch beside the predicted one."""

from __future__ import annotations

import sys
from pathlib import Path

from tabulate import tabulate

from pytest_dlmbench.core import BenchPoint, DecodeOptions
from pytest_dlmbench.memory_model import predicted_peak_bytes
from pytest_dlmbench.models import get_spec
from pytest_dlmbench.paradigms import make_paradigm
from pytest_dlmbench.runtimes import RUNTIMES
from pytest_dlmbench.store import load_run

HEADERS = ("paradigm", "strategy", "prompt", "runtime", "card GiB", "max batch", "first OOM", "predicted max batch",
           "peak at max GiB", "predicted peak GiB", "measured / predicted", "probes", "tok/s at max")


def predicted_peak(info: dict, batch: int) -> int:
    point = BenchPoint(info["paradigm"], info["model"], info["prompt_len"], info["gen_len"], batch, info["strategy"],
                       info["runtime"], info["fidelity"])
    spec = get_spec(point.model)
    phases = make_paradigm(point.paradigm, DecodeOptions(tpf=3.0), point.strategy, point.fidelity).memory_phases(
        spec, point.prompt_len, point.gen_len)
    return predicted_peak_bytes(spec, phases, batch, info["dtype"], RUNTIMES[point.runtime].concatenates)


def rows(folder: Path) -> list[tuple]:
    found = []
    for path in sorted(folder.glob("*.jsonl")):
        for info in load_run(path).points.values():
            if info.get("max_batch_size") is None:
                continue
            at_max, batch = info["peak_mem_at_max_bytes"], info["max_batch_size"]
            predicted = predicted_peak(info, batch) if batch else None
            found.append((info["paradigm"], info["strategy"], info["prompt_len"], info["runtime"],
                          info["memory_limit_gib"] or "whole", batch, info["first_oom_batch"] or "none up to the cap",
                          info["predicted_max_batch"], at_max and at_max / 2**30, predicted and predicted / 2**30,
                          at_max and predicted and at_max / predicted, info["boundary_probes"],
                          info["tokens_per_s"] if info["status"] == "ok" else info["status"]))
    return sorted(found, key=lambda row: tuple(map(str, row[:5])))


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    print(tabulate(rows(folder), headers=HEADERS, tablefmt="github", floatfmt=".3g", missingval="-"))
