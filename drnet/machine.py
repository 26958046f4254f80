"""The machine a measurement ran on: CPU name and flags, threads, load, device and versions.

Every speed figure drnet prints or writes (benchmarks, the demo's ``metrics.json``, the layout
cache key) says where it was measured through these functions, so that two figures are
comparable only when their machines are.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drnet import __version__

#: The CPU features that decide torch's kernels (and so the speed).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_name_and_flags() -> tuple[str, str]:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has (what decides the kernels)."""
    name, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        flags = " ".join(f for f in CPU_FLAGS if f" {f}" in text)
    return name, flags


def cpu_signature() -> str:
    """``"<model name> [<flags>]"``, e.g. ``"AMD EPYC 7B13 [avx2]"``."""
    name, flags = cpu_name_and_flags()
    return f"{name} [{flags}]"


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (two decimals); None where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str]:
    """The versions a result depends on: drnet, Python, torch, torchvision, NumPy, Pillow."""
    import PIL  # here: the other helpers of this module need neither PIL nor torchvision
    import torchvision

    return {
        "drnet": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def device_info(device: torch.device) -> dict[str, Any]:
    """The device a run computed on: its type and name, the CPU count, torch's threads, the
    platform, and the GPU's name on CUDA."""
    info: dict[str, Any] = {
        "type": device.type,
        "name": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU/GPU, threads, versions and the load average at the time of the call (the layout
    benchmarks write)."""
    cpu, flags = cpu_name_and_flags()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    load = load_average()
    if load is not None:
        info["load_average"] = load
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
