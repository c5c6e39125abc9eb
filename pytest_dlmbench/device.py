"""The one CPU-versus-CUDA branch: synchronising, the allocator's peaks, freeing and capping
memory, and what the device is. Other modules ask here instead of testing the device type.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    """Wait until all queued work on `device` has finished (a no-op off CUDA)."""
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def host_to_device(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """A host list as a long tensor on `device`, without waiting for the work queued there: a copy
    from pageable memory blocks the host until the stream has drained; from pinned memory, copied
    without blocking, it does not (the caching host allocator keeps the source until the copy ran)."""
    import torch

    host = torch.tensor(values, dtype=torch.long)
    return host.pin_memory().to(device, non_blocking=True) if is_cuda(device) else host.to(device)


def reset_peaks(device: torch.device) -> None:
    """Start the allocator's peak counters afresh, after the queued work (a no-op off CUDA)."""
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def allocator_peaks(device: torch.device) -> tuple[int | None, int | None]:
    """torch's (allocated, reserved) peaks since the last reset; (None, None) off CUDA."""
    if not is_cuda(device):
        return None, None
    import torch

    return int(torch.cuda.max_memory_allocated(device)), int(torch.cuda.max_memory_reserved(device))


def release(device: torch.device) -> None:
    """Collect garbage and give cached device memory back, so the next model or point starts from
    the same baseline."""
    gc.collect()
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def limit_memory(device: torch.device, gib: float | None) -> None:
    """Cap this process's usable device memory at `gib` (as if the card were that size; CUDA only)."""
    if gib is None or not is_cuda(device):
        return
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()  # "cuda" has no index
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total_memory_bytes(device)), index)


def visible_gpus() -> int:
    """How many CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def share_cpu(device: torch.device, processes: int) -> None:
    """Off CUDA, give this process its share of the CPU's cores when `processes` (pytest-xdist
    workers) run at once: oversubscribed torch threads spin and slow every point many times over."""
    if processes > 1 and not is_cuda(device):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))


def rss_bytes() -> int:
    """The process's resident set size: CPU runs' memory reading."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class DeviceInfo:
    name: str | None  # the GPU's name (None off CUDA)
    count: int  # visible GPUs
    memory_bytes: int  # the device's memory, or the machine's RAM off CUDA


def describe(device: torch.device) -> DeviceInfo:
    if not is_cuda(device):
        return DeviceInfo(None, 0, total_memory_bytes(device))
    import torch

    properties = torch.cuda.get_device_properties(device)
    return DeviceInfo(properties.name, torch.cuda.device_count(), int(properties.total_memory))


def total_memory_bytes(device: torch.device) -> int:
    if not is_cuda(device):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import torch

    return int(torch.cuda.get_device_properties(device).total_memory)


def nvml_device(device: torch.device) -> Any:
    """The NVML handle of a torch CUDA device (matched by UUID); raises where NVML is unusable."""
    import pynvml
    import torch

    pynvml.nvmlInit()
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    try:
        return pynvml.nvmlDeviceGetHandleByUUID(uuid)
    except pynvml.NVMLError:
        return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
