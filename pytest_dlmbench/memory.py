"""Peak memory of one benchmark point: NVML device readings plus torch's allocator peaks.

NVML sees everything on the device (other processes, the CUDA context, fragmentation) and is
sampled from a background thread; torch's peaks see only this process's tensors. Off CUDA the
process's resident set size stands in. A missing or failing NVML gives nulls and a warning.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class MemoryWarning(UserWarning):
    """A memory reading could not be taken; the value is recorded as null."""


@dataclass(frozen=True)
class MemoryReport:
    """Peaks over one tracked region, in bytes (None where the reading is unavailable)."""

    peak_allocated_bytes: int | None = None  # torch.cuda.max_memory_allocated
    peak_reserved_bytes: int | None = None  # torch.cuda.max_memory_reserved
    nvml_peak_used_bytes: int | None = None  # device-wide used memory, sampled
    nvml_baseline_used_bytes: int | None = None  # device-wide used memory when tracking began
    peak_rss_bytes: int | None = None  # CPU runs: process resident set size, sampled

    @property
    def peak_bytes(self) -> int | None:
        """The most telling single peak: torch's allocated bytes on CUDA, RSS on CPU."""
        return self.peak_allocated_bytes if self.peak_allocated_bytes is not None else self.peak_rss_bytes


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def nvml_handle(device: torch.device) -> Any | None:
    """The NVML handle of a torch CUDA device (matched by UUID), or None with a warning."""
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except pynvml.NVMLError:
            return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
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
        self._cuda = device.type == "cuda"
        self._handle: Any | None = nvml_handle(device) if self._cuda else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak: int | None = None
        self._baseline: int | None = None
        self._failed: str | None = None

    def _sample(self) -> int | None:
        if not self._cuda:
            return _rss_bytes()
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
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._record()
        self._baseline = self._peak
        self._thread = threading.Thread(target=self._loop, name="dlmbench-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
        self._record()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._failed is not None:
            warnings.warn(f"memory sampling failed, peak may be low or null: {self._failed}", MemoryWarning, stacklevel=2)
        if not self._cuda:
            self.report = MemoryReport(peak_rss_bytes=self._peak)
            return
        import torch

        self.report = MemoryReport(
            peak_allocated_bytes=int(torch.cuda.max_memory_allocated(self.device)),
            peak_reserved_bytes=int(torch.cuda.max_memory_reserved(self.device)),
            nvml_peak_used_bytes=self._peak,
            nvml_baseline_used_bytes=self._baseline,
        )


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocator OOM (torch.OutOfMemoryError); other CUDA errors are not OOM."""
    import torch

    return isinstance(error, torch.OutOfMemoryError)


def memory_now(device: torch.device) -> MemoryReport:
    """Peaks since the last reset, and device-wide used memory now (e.g. at a failure)."""
    if device.type != "cuda":
        return MemoryReport(peak_rss_bytes=_rss_bytes())
    import torch

    handle = nvml_handle(device)
    used = None
    if handle is not None:
        import pynvml

        used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    return MemoryReport(
        peak_allocated_bytes=int(torch.cuda.max_memory_allocated(device)),
        peak_reserved_bytes=int(torch.cuda.max_memory_reserved(device)),
        nvml_peak_used_bytes=used,
    )


def release_memory(device: torch.device) -> None:
    """Return what a failed point left behind, so the next point starts from the same baseline."""
    import gc

    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
