"""The energy table: one row per point of the saved runs given (default: standard-energy.json.xz), in
the file's order. python results/energy-h100/table.py [RUN ...]"""

from __future__ import annotations

import sys
from pathlib import Path

from tabulate import tabulate

from pytest_dlmbench.store import read_run_document

COLUMNS = (("paradigm", "paradigm", ""), ("model", "model", ""), ("prompt", "prompt_len", ""), ("gen", "gen_len", ""),
           ("batch", "batch_size", ""), ("tok/s", "tokens_per_s", ".1f"), ("tok/J", "tokens_per_joule", ".3f"),
           ("J/token", "joules_per_token", ".2f"), ("mean W", "mean_power_w", ".0f"), ("rounds", "rounds", ""))


def rows(paths: list[Path]) -> list[list[object]]:
    return [[entry["extra_info"][key] for _, key, _ in COLUMNS]
            for path in paths for entry in read_run_document(path)["benchmarks"]]


def main(argv: list[str]) -> None:
    paths = [Path(arg) for arg in argv] or [Path(__file__).parent / "standard-energy.json.xz"]
    print(tabulate(rows(paths), headers=[header for header, _, _ in COLUMNS], tablefmt="github",
                   floatfmt=[digits for _, _, digits in COLUMNS]))


if __name__ == "__main__":
    main(sys.argv[1:])
