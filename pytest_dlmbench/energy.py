"""Energy of a point's timed rounds from NVML's total-energy counter (millijoules since the driver
loaded, device-wide). Where the counter is absent (no CUDA, no NVML, a GPU without it) or does not
advance over the window, the reading is null with the reason, never a guess."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from pytest_dlmbench.core import EnergyReading
from pytest_dlmbench.device import is_cuda, nvml_device, synchronize

if TYPE_CHECKING:
    import torch


def nvml_energy_counter(device: torch.device) -> Callable[[], int]:
    """A reader of the device's total-energy counter in mJ; raises where NVML or the counter is absent."""
    import pynvml

    handle = nvml_device(device)
    pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # NotSupported raises here, before any window
    return lambda: int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))


class EnergyMeter:
    """``with EnergyMeter(device) as meter: ...`` then ``meter.reading``: the joules over the body,
    the device synchronized at its end. `counter` (mJ) replaces NVML's."""

    def __init__(self, device: torch.device, counter: Callable[[], int] | None = None) -> None:
        self.device = device
        self.reading = EnergyReading(reason="not measured")
        self._counter = counter
        self._reason: str | None = None
        self._start_mj = 0
        self._began = 0.0
        if counter is None and not is_cuda(device):
            self._reason = f"no energy counter on {device.type} (NVML reads NVIDIA GPUs only)"
        elif counter is None:
            try:
                self._counter = nvml_energy_counter(device)
            except Exception as error:  # NVML absent, or a GPU without the counter
                self._reason = f"NVML total-energy counter unavailable: {type(error).__name__}: {error}"

    def __enter__(self) -> EnergyMeter:
        synchronize(self.device)
        if self._counter is not None and self._reason is None:
            self._start_mj = self._counter()
        self._began = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        synchronize(self.device)
        window_s = time.perf_counter() - self._began
        if self._counter is None or self._reason is not None:
            self.reading = EnergyReading(window_s=window_s, reason=self._reason)
            return
        spent_mj = self._counter() - self._start_mj
        if spent_mj <= 0:
            self.reading = EnergyReading(window_s=window_s, reason=f"the NVML energy counter did not advance "
                                                                   f"over the {window_s * 1e3:.1f} ms timed")
            return
        self.reading = EnergyReading(joules=spent_mj / 1e3, window_s=window_s)
