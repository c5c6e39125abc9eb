"""Copy a run file without its eager points timed cold (no warm-up round: cuDNN plans built per new
length inside the timed round), which are not comparable with graphs points (captured untimed).
Usage: python results/graph-runtime/warm_only.py RUN.json OUT.json
"""

from __future__ import annotations

import json
import sys


def main(source: str, target: str) -> None:
    run = json.load(open(source))
    kept = [point for point in run["benchmarks"]
            if not (point["extra_info"].get("runtime") == "eager" and point["extra_info"].get("warmup_rounds") == 0)]
    print(f"{target}: {len(kept)} of {len(run['benchmarks'])} points (cold eager points left out)")
    with open(target, "w") as out:
        json.dump({**run, "benchmarks": kept}, out, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: python {sys.argv[0]} RUN.json OUT.json (got {len(sys.argv) - 1} arguments)")
    main(*sys.argv[1:])
