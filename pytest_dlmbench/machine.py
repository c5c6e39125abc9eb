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


def machine_info(settings: Settings) -> dict[str, Any]:
    """A flat description of the software and the device the run measured on."""
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
    }
    device = describe(settings.torch_device)
    if device.name is not None:
        info |= {"gpu_name": device.name, "gpu_count": device.count, "gpu_memory_bytes": device.memory_bytes,
                 "driver": _nvml_driver()}
    return info
