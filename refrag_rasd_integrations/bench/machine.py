"""Describe the machine a benchmark ran on, for the results file.

Example:
    >>> "cpu" in machine_info("cpu")
    True
"""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device) -> dict[str, Any]:
    """CPU model, cores, library versions and the device the models ran on."""
    import transformers

    dev = torch.device(device)
    info: dict[str, Any] = {
        "name": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(dev),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def machine_slug(info: dict[str, Any]) -> str:
    """A short name for file names: ``cpu2`` / ``h100``-like."""
    if "gpu" in info:
        return "".join(ch for ch in info["gpu"].lower().split()[-1] if ch.isalnum()) or "gpu"
    return f"cpu{info['cores']}"
