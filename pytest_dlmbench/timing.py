"""Device-true timing: CUDA events per region, and device synchronization for whole calls.

On CUDA, regions are bracketed by events and read with a single synchronize; on CPU,
`perf_counter` gives the same interface.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pytest_dlmbench.device import is_cuda, synchronize

if TYPE_CHECKING:
    import torch


class RegionTimer:
    """Times named regions (e.g. each forward pass) in milliseconds without stalling the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._cuda = is_cuda(device)
        self._pending: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)
        self._done_ms: dict[str, list[float]] = defaultdict(list)
        # when each region ended, in recording order, measured from the timer's creation
        self._ends: list[torch.cuda.Event] = []
        self._ends_ms: list[float] = []
        if self._cuda:
            import torch

            self._origin = torch.cuda.Event(enable_timing=True)
            self._origin.record()
        self._began = time.perf_counter()

    @contextmanager
    def region(self, name: str) -> Iterator[None]:
        if self._cuda:
            import torch

            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending[name].append((start, end))
            self._ends.append(end)
        else:
            began = time.perf_counter()
            yield
            ended = time.perf_counter()
            self._done_ms[name].append((ended - began) * 1e3)
            self._ends_ms.append((ended - self._began) * 1e3)

    def read(self) -> dict[str, list[float]]:
        """Milliseconds per region name, in recording order (one synchronize on CUDA)."""
        if self._pending:
            synchronize(self.device)
            for name, pairs in self._pending.items():
                self._done_ms[name].extend(start.elapsed_time(end) for start, end in pairs)
            self._pending.clear()
        return {name: list(values) for name, values in self._done_ms.items()}

    def ends_ms(self) -> list[float]:
        """Milliseconds from the timer's creation to the end of each region, in recording order:
        when each forward's output existed, for latencies as a request sees them."""
        if self._ends:
            synchronize(self.device)
            self._ends_ms.extend(self._origin.elapsed_time(end) for end in self._ends)
            self._ends.clear()
        return list(self._ends_ms)
