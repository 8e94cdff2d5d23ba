"""What a benchmark ran on: CPU model and cores, torch threads, library versions, GPU, load and date."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from pathlib import Path

import torch

LIBRARIES = ("torch", "monai", "mlflow", "pytorch-ignite")


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` where /proc is absent)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def library_version(name: str) -> str | None:
    """The installed version of a distribution (None if it is not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str | torch.device | None = None) -> dict[str, object]:
    """The machine, the libraries and the moment, taken before the timings (the load average is theirs)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        **{name.removeprefix("pytorch-"): library_version(name) for name in LIBRARIES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(value, 2) for value in load] if load else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def machine_summary(machine: dict[str, object]) -> str:
    """One Markdown line naming the machine a result was measured on."""
    gpu = f"GPU {machine['gpu']} (CUDA {machine['cuda']})" if machine.get("gpu") else "no GPU"
    return (f"{machine['cpu_model']}, {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable), "
            f"torch {machine['torch']} with {machine['torch_threads']} thread(s), monai {machine['monai']}, "
            f"mlflow {machine['mlflow']}, ignite {machine['ignite']}, {gpu}; Python {machine['python']}, "
            f"{machine['platform']}; load average at start {machine['load_average_at_start']}; {machine['date']}.")
