"""What a saved run must say about the machine: GPU, driver, CUDA and library versions, dtype."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

from pytest_dlmbench.device import describe

if TYPE_CHECKING:
    from pytest_dlmbench.core import Settings


def _nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception:
        return None


def machine_info(settings: Settings, workers: dict[str, int] | None = None) -> dict[str, Any]:
    """A flat description of the software and the devices the run measured on; `workers`: each
    pytest-xdist worker's GPU (None: one process)."""
    import torch
    import transformers

    from pytest_dlmbench import __version__

    info: dict[str, Any] = {
        "dlmbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": settings.device,
        "dtype": settings.dtype,
        "cuda": torch.version.cuda,
        "gpu_name": None,
        "gpu_count": 0,
        "gpu_memory_bytes": None,
        "driver": None,
        "cpu_count": os.cpu_count(),
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "workers": workers,  # xdist worker -> GPU index; which point ran where is each point's worker and gpu_index
        "gpus_used": [],
        "shard": None if settings.shard is None else "{}/{}".format(*settings.shard),
    }
    device = describe(settings.torch_device)
    if device.name is not None:
        used = sorted(set(workers.values())) if workers else [settings.gpu_index or 0]
        info |= {"gpu_name": device.name, "gpu_count": device.count, "gpu_memory_bytes": device.memory_bytes,
                 "driver": _nvml_driver(),
                 "gpus_used": [{"index": index, "name": torch.cuda.get_device_name(index),
                                "workers": sorted(w for w, gpu in (workers or {}).items() if gpu == index)}
                               for index in used]}
    return info
