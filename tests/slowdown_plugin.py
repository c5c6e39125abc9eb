"""A pytest plugin that slows every model forward of pytest-dlmbench, to test the gate on a real
regression: `-p slowdown_plugin` (with this folder on the path) and DLMBENCH_SLOWDOWN=FACTOR.

After each forward it waits for the device, then sleeps FACTOR times the forward's own time, so
every forward takes (1 + FACTOR) times as long: 1.0 doubles a generation, 0.1 adds 10 %.
DLMBENCH_FORWARD_FLOOR_MS=MS adds MS of sleep inside every forward (part of its own time), so that
a CPU whose speed drifts between runs moves only a small part of each forward.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _slow_forwards(monkeypatch: pytest.MonkeyPatch) -> None:
    factor = float(os.environ.get("DLMBENCH_SLOWDOWN", "0"))
    floor_s = float(os.environ.get("DLMBENCH_FORWARD_FLOOR_MS", "0")) / 1e3
    if not factor and not floor_s:
        return
    from pytest_dlmbench.paradigms.base import ForwardLog
    from pytest_dlmbench.device import synchronize

    original = ForwardLog.forward

    @contextlib.contextmanager
    def slowed(self: ForwardLog, *args: Any, **kwargs: Any) -> Iterator[None]:
        began = time.perf_counter()
        with original(self, *args, **kwargs):
            yield
            time.sleep(floor_s)
        synchronize(self.timer.device)
        time.sleep(factor * (time.perf_counter() - began))

    monkeypatch.setattr(ForwardLog, "forward", slowed)
