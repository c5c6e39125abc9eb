"""Peak memory of one benchmark point: NVML device readings plus torch's allocator peaks.

NVML sees everything on the device (other processes, the CUDA context, fragmentation) and is
sampled from a background thread; torch's peaks see only this process's tensors. Off CUDA the
process's resident set size stands in. A missing or failing NVML gives nulls and a warning.
"""

from __future__ import annotations

import os
import threading
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pytest_dlmbench.core import MemoryReport
from pytest_dlmbench.device import allocator_peaks, is_cuda, nvml_device, release, reset_peaks, rss_bytes, synchronize

if TYPE_CHECKING:
    import torch


class MemoryWarning(UserWarning):
    """A memory reading could not be taken; the value is recorded as null."""


# NVML clock-event (throttle) reason bits and their names.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def device_state(handle: Any) -> dict[str, Any]:
    """Clocks, clock-event (throttle) reasons, and other processes' memory on the device."""
    import pynvml

    reasons_of = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
    reasons = int(reasons_of(handle))
    try:
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        others = sum(int(p.usedGpuMemory or 0) for p in processes if p.pid != os.getpid())
    except pynvml.NVMLError:
        others = None
    return {
        "sm_clock_mhz": int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "mem_clock_mhz": int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
        "clock_event_reasons": [name for bit, name in CLOCK_EVENT_REASONS.items() if reasons & bit],
        "other_processes_bytes": others,
    }


def nvml_handle(device: torch.device) -> Any | None:
    """The NVML handle of a torch CUDA device, or None with a warning."""
    try:
        return nvml_device(device)
    except Exception as error:  # NVML absent, driver mismatch, no permission...
        warnings.warn(f"NVML unavailable, device memory readings will be null: {error}", MemoryWarning, stacklevel=2)
        return None


class MemoryTracker:
    """Context manager that records peak memory over its body.

    Usage: ``with MemoryTracker(device) as tracker: ...`` then ``tracker.report``.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.report = MemoryReport()
        self._cuda = is_cuda(device)
        self._handle: Any | None = nvml_handle(device) if self._cuda else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak: int | None = None
        self._baseline: int | None = None
        self._failed: str | None = None
        self._state_start: dict[str, Any] | None = None

    def _state(self) -> dict[str, Any] | None:
        if self._handle is None:
            return None
        try:
            state = device_state(self._handle)
        except Exception as error:  # NVML without clock or process queries
            warnings.warn(f"NVML device state unavailable: {error}", MemoryWarning, stacklevel=3)
            return None
        if state["other_processes_bytes"]:
            warnings.warn(f"other processes hold {state['other_processes_bytes'] / 2**30:.1f} GiB on the "
                          "benchmark GPU: results may suffer from contention", MemoryWarning, stacklevel=3)
        return state

    def _sample(self) -> int | None:
        if not self._cuda:
            return rss_bytes()
        if self._handle is None:
            return None
        import pynvml

        return int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record()

    def _record(self) -> None:
        try:
            value = self._sample()
        except Exception as error:
            self._failed = str(error)
            self._stop.set()
            return
        if value is not None:
            self._peak = value if self._peak is None else max(self._peak, value)

    def __enter__(self) -> MemoryTracker:
        reset_peaks(self.device)
        self._record()
        self._baseline = self._peak
        self._state_start = self._state()
        self._thread = threading.Thread(target=self._loop, name="dlmbench-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        synchronize(self.device)
        self._record()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._failed is not None:
            warnings.warn(f"memory sampling failed, peak may be low or null: {self._failed}", MemoryWarning,
                          stacklevel=2)
        if not self._cuda:
            self.report = MemoryReport(peak_rss_bytes=self._peak)
            return
        allocated, reserved = allocator_peaks(self.device)
        self.report = MemoryReport(
            peak_allocated_bytes=allocated,
            peak_reserved_bytes=reserved,
            nvml_peak_used_bytes=self._peak,
            nvml_baseline_used_bytes=self._baseline,
            state_start=self._state_start,
            state_end=self._state(),
        )


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocator OOM (torch.OutOfMemoryError); other CUDA errors are not OOM."""
    import torch

    return isinstance(error, torch.OutOfMemoryError)


def memory_now(device: torch.device) -> MemoryReport:
    """Peaks since the last reset, and device-wide used memory now (e.g. at a failure)."""
    if not is_cuda(device):
        return MemoryReport(peak_rss_bytes=rss_bytes())
    handle = nvml_handle(device)
    used = None
    if handle is not None:
        import pynvml

        used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    allocated, reserved = allocator_peaks(device)
    return MemoryReport(peak_allocated_bytes=allocated, peak_reserved_bytes=reserved, nvml_peak_used_bytes=used)


def release_memory(device: torch.device) -> None:
    """Return what a failed point left behind, so the next point starts from the same baseline."""
    release(device)
    reset_peaks(device)
