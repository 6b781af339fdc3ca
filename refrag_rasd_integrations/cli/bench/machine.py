"""Describe the machine a benchmark ran on, for the results file.

The CPU's marketing name is not enough to compare files: two VMs both reporting "AMD EPYC" with 2 cores have
been seen here 3-5x apart on the same decoder (different CPU generations, different memory bandwidth). So the
description carries the CPU family / model numbers, the vector ISA torch dispatches to, and a ~0.3 s probe of
what bounds a decoding step: memory read bandwidth and fp32 matmul throughput.

Example:
    >>> info = machine_info("cpu")
    >>> "cpu" in info and info["probe"]["read_gb_s"] > 0 and info["probe"]["matmul_gflops"] > 0
    True
"""

from __future__ import annotations

import os
import platform
import socket
import time
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


def cpu_ids() -> str | None:
    """``"family F model M"`` from ``/proc/cpuinfo`` (tells CPU generations apart), or ``None``."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip():
                    break
    except OSError:
        return None
    if len(fields) < 2:
        return None
    return f"family {fields['cpu family']} model {fields['model']}"


@torch.inference_mode()
def speed_probe(seconds: float = 0.3) -> dict[str, float]:
    """What this machine does now, in about ``seconds``: memory read bandwidth (GB/s, summing a 64 MB tensor)
    and fp32 matmul throughput (GFLOP/s, 512 x 512); best of the repeats."""
    big = torch.ones(16 << 20)
    a = torch.ones(512, 512)
    read, flops = 0.0, 0.0
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        big.sum()
        t1 = time.perf_counter()
        a @ a
        t2 = time.perf_counter()
        read = max(read, big.numel() * 4 / max(t1 - t0, 1e-9) / 1e9)
        flops = max(flops, 2 * 512 ** 3 / max(t2 - t1, 1e-9) / 1e9)
        if t2 > end:
            return {"read_gb_s": round(read, 1), "matmul_gflops": round(flops, 1)}


def machine_info(device: str | torch.device, runner: Any = None) -> dict[str, Any]:
    """CPU model (name, family / model numbers, the ISA torch uses), cores, a speed probe
    (:func:`speed_probe`), library versions and the device the models ran on; with ``runner`` (the engine's),
    also what its forward measured and chose at load on this machine (``runner.describe()``; the bench suites
    put ``engine.describe()["forward_choices"]`` there instead, :func:`~.results.results_header`)."""
    import transformers

    dev = torch.device(device)
    info: dict[str, Any] = {
        "name": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_ids": cpu_ids(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(dev),
    }
    info["probe"] = speed_probe()
    if runner is not None and hasattr(runner, "describe"):
        info["forward"] = runner.describe()
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


# AMD EPYC generations by ``cpu_ids`` (two 2-core VMs of one name ran 3-5x apart): the slug tells them apart
CPU_GENERATIONS = {"family 25 model 1": "milan", "family 25 model 17": "genoa"}


def local_slug() -> str:
    """:func:`machine_slug` of this machine without the speed probe (the default ``--machine`` of the tools)."""
    return machine_slug({"cores": os.cpu_count(), "cpu_ids": cpu_ids()})


def machine_slug(info: dict[str, Any]) -> str:
    """A short name for file names: ``cpu2`` / ``cpu2genoa`` (a known CPU generation) / ``h100``-like.

    Example:
        >>> machine_slug({"cores": 2, "cpu_ids": "family 25 model 17"}), machine_slug({"cores": 16})
        ('cpu2genoa', 'cpu16')
        >>> machine_slug({"cores": 16, "gpu": "NVIDIA H100 80GB HBM3"})
        'h100'
    """
    if info.get("gpu"):  # "NVIDIA H100 80GB HBM3" -> h100: the first word with a digit that is not a size
        words = info["gpu"].lower().split()
        model = next((w for w in words if any(c.isdigit() for c in w) and not w.endswith("gb")), words[-1])
        return "".join(ch for ch in model if ch.isalnum()) or "gpu"
    return f"cpu{info.get('cores', '')}{CPU_GENERATIONS.get(info.get('cpu_ids') or '', '')}"
