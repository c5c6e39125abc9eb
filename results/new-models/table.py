"""The new shapes' table: one row per point of the saved runs given (default: h100/*.json.xz), both
runtimes side by side. python results/new-models/table.py [RUN ...]"""

from __future__ import annotations

import sys
from pathlib import Path

from tabulate import tabulate

from pytest_dlmbench.store import read_run_document


def rows(paths: list[Path]) -> list[list[object]]:
    points: dict[tuple, dict[str, dict]] = {}
    for path in paths:
        for entry in read_run_document(path)["benchmarks"]:
            info = entry["extra_info"]
            key = (info["model"], info["paradigm"], info["prompt_len"], info["gen_len"], info["batch_size"])
            points.setdefault(key, {})[info["runtime"]] = info
    table = []
    for (model, paradigm, prompt, gen, batch), by_runtime in sorted(points.items()):
        graphs, eager = by_runtime.get("graphs"), by_runtime.get("eager")

        def rate(info: dict | None, key: str, digits: int = 1, runtime: str = "") -> object:
            if info is None and key == "tokens_per_s":  # graphs refuses what it does not implement; eager refuses none
                return "refused" if runtime == "graphs" else "not run"
            return None if info is None or info.get(key) is None else round(info[key], digits)

        table.append([model, paradigm, prompt, gen, batch, rate(graphs, "tokens_per_s", runtime="graphs"),
                      rate(eager, "tokens_per_s", runtime="eager"),
                      rate(graphs, "ms_per_forward", 2), rate(eager, "ms_per_forward", 2),
                      rate(graphs or eager, "roofline_fraction", 3),
                      round((graphs or eager)["bytes_per_forward"] / 1e9, 1)])
    return table


def main(argv: list[str]) -> None:
    paths = [Path(arg) for arg in argv] or sorted((Path(__file__).parent / "h100").glob("*.json.xz"))
    print(tabulate(rows(paths), headers=["model", "paradigm", "prompt", "gen", "batch", "tok/s graphs", "tok/s eager",
                                         "ms/fwd graphs", "ms/fwd eager", "roofline fraction*", "GB/fwd*"],
                   tablefmt="github"))


if __name__ == "__main__":
    main(sys.argv[1:])
