"""One OOM probe at one batch: in this process, or in a fresh one (`python -m pytest_dlmbench.probe`,
which prints its verdict as JSON).

A process that ran out of device memory is not always fit to measure again (fragmentation,
half-freed state); a fresh process per probe is the robust way (`--dlm-isolate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_dlmbench.core import BenchPoint, Settings, step_times_ms
from pytest_dlmbench.device import limit_memory
from pytest_dlmbench.extensions import import_modules, importable_modules
from pytest_dlmbench.memory import MemoryTracker, is_out_of_memory, release_memory
from pytest_dlmbench.paradigms import ForwardLog
from pytest_dlmbench.paradigms.base import call_user_generate, user_vocab
from pytest_dlmbench.prompts import synthetic_prompts
from pytest_dlmbench.runtimes import make_runtime
from pytest_dlmbench.timing import RegionTimer


@dataclass(frozen=True)
class ProbeResult:
    batch_size: int
    fits: bool
    peak_allocated_bytes: int | None = None
    forward_ms: float | None = None  # mean device time of the probe's non-prefill forwards
    prefill_ms: float = 0.0  # device time of its prefill, if it has one

    def generation_s(self, gen_len: int) -> float | None:
        """A rough full generation's time at this batch, to decide whether to time it: the prefill,
        then one forward per token at the probe's mean cost (no host time between forwards; parallel
        strategies need fewer forwards)."""
        return None if self.forward_ms is None else (self.prefill_ms + self.forward_ms * gen_len) / 1e3


def measured_probe(settings: Settings, batch: int, run: Callable[[ForwardLog], None]) -> tuple[ProbeResult, ForwardLog]:
    """`run(log)` under the memory tracker at `batch`; an OOM is a "does not fit", not a failure."""
    import torch

    device = settings.torch_device
    log = ForwardLog(RegionTimer(device))
    try:
        with torch.inference_mode(), MemoryTracker(device) as tracker:
            run(log)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        release_memory(device)
        return ProbeResult(batch, False), log
    times = log.timer.read()
    steps = step_times_ms(times)
    return ProbeResult(batch, True, tracker.report.peak_allocated_bytes, statistics.fmean(steps) if steps else None,
                       sum(times.get("prefill", []))), log


def probe_in_process(settings: Settings, point: BenchPoint, model: Any, spec: Any, paradigm: Any) -> ProbeResult:
    """Run the paradigm's probe at `point.batch_size`."""
    def run(log: ForwardLog) -> None:
        prompt_ids = synthetic_prompts(spec.prompt_vocab_limit, point.batch_size, point.prompt_len, settings.seed,
                                       settings.torch_device)
        paradigm.probe(make_runtime(point.runtime, model), spec, prompt_ids, point.gen_len, log)

    return measured_probe(settings, point.batch_size, run)[0]


def probe_user(settings: Settings, point: BenchPoint, generate: Any,
               vocab_size: int | None) -> tuple[ProbeResult, tuple[Any, ...]]:
    """A user's whole generation at `point.batch_size`, in this process, and the forwards it logged
    (ForwardShape). `generate(prompt_ids[, log])` as `dlm_bench(point, generate=...)` takes it."""
    def run(log: ForwardLog) -> None:
        prompt_ids = synthetic_prompts(user_vocab(point.model, vocab_size), point.batch_size, point.prompt_len,
                                       settings.seed, settings.torch_device)
        call_user_generate(generate, prompt_ids, log)

    result, log = measured_probe(settings, point.batch_size, run)
    return result, tuple(log.shapes) if result.fits else ()


def die_with_parent(parent: int) -> None:
    """In a child process (Linux): be killed when the parent dies, even by SIGKILL, so a killed
    boundary search leaves no probe holding the GPU. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def run_child(command: list[str]) -> subprocess.CompletedProcess[str]:
    """`command` in a child process that dies with this one; its output captured."""
    import os

    parent = os.getpid()
    return subprocess.run(command, capture_output=True, text=True,
                          preexec_fn=lambda: die_with_parent(parent))


def probe_isolated(argv: list[str], batch: int) -> ProbeResult:
    """Run one probe in a fresh Python process (`python -m pytest_dlmbench.probe`)."""
    done = run_child([sys.executable, "-m", "pytest_dlmbench.probe", *argv, f"--batch={batch}"])
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"isolated probe at batch {batch} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    return ProbeResult(**result)


def probe_arguments(settings: Settings, point: BenchPoint) -> list[str]:
    """The command-line arguments that reproduce `settings` (every field) and `point` in a probe process."""
    return [f"--settings={settings.to_json()}", f"--point={json.dumps(dataclasses.asdict(point))}",
            f"--modules={','.join(importable_modules())}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_dlmbench.probe")
    parser.add_argument("--settings", required=True)
    parser.add_argument("--point", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--modules", default="", help="modules that register extensions without an entry point")
    args = parser.parse_args(argv)
    import_modules([module for module in args.modules.split(",") if module])  # the parent's extensions
    settings = Settings.from_json(args.settings)
    point = dataclasses.replace(BenchPoint(**json.loads(args.point)), batch_size=args.batch)

    from pytest_dlmbench.loader import ModelCache
    from pytest_dlmbench.paradigms.base import paradigm_for

    limit_memory(settings.torch_device, settings.memory_limit_gib)
    loaded = ModelCache(settings).get(point.model)
    paradigm = paradigm_for(point, settings, loaded.weights)
    result = probe_in_process(settings, point, loaded.model, loaded.spec, paradigm)
    print(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
