"""What a saved run must say about the machine: GPU, driver, CUDA and library versions, dtype."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_dlmbench.options import Settings


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
    if settings.device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(torch.device(settings.device))
        info |= {
            "gpu_name": properties.name,
            "gpu_count": torch.cuda.device_count(),
            "gpu_memory_bytes": int(properties.total_memory),
            "driver": _nvml_driver(),
        }
    return info
