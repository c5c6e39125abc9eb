"""`python -m pytest_dlmbench.probe`: one OOM probe in a fresh process, its verdict as JSON.

A process that ran out of device memory is not always fit to measure again (fragmentation,
half-freed state); a fresh process per probe is the robust way (`--dlm-isolate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from pytest_dlmbench.grid import BenchPoint
from pytest_dlmbench.options import Settings
from pytest_dlmbench.paradigms import DecodeOptions


def probe_arguments(settings: Settings, point: BenchPoint) -> list[str]:
    """The command-line arguments that reproduce `settings` and `point` in a probe process."""
    chosen = {"device": settings.device, "dtype": settings.dtype, "seed": settings.seed, "tpf": settings.tpf,
              "checkpoints": settings.checkpoints, "memory_limit_gib": settings.memory_limit_gib,
              "decode": dataclasses.asdict(settings.decode)}
    return [f"--settings={json.dumps(chosen)}", f"--point={json.dumps(dataclasses.asdict(point))}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_dlmbench.probe")
    parser.add_argument("--settings", required=True)
    parser.add_argument("--point", required=True)
    parser.add_argument("--batch", type=int, required=True)
    args = parser.parse_args(argv)
    chosen: dict[str, Any] = json.loads(args.settings)
    chosen["decode"] = DecodeOptions(**chosen["decode"])
    chosen["checkpoints"] = tuple(tuple(pair) for pair in chosen["checkpoints"])
    settings = Settings(**chosen)
    point = dataclasses.replace(BenchPoint(**json.loads(args.point)), batch_size=args.batch)

    from pytest_dlmbench.boundary import apply_memory_limit, probe_in_process
    from pytest_dlmbench.loader import ModelCache
    from pytest_dlmbench.paradigms import make_paradigm

    apply_memory_limit(settings.memory_limit_gib, settings.torch_device)
    loaded = ModelCache(settings).get(point.model)
    paradigm = make_paradigm(point.paradigm, settings.decode_for(loaded.weights), point.strategy)
    result = probe_in_process(settings, point, loaded.model, loaded.spec, paradigm)
    print(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
