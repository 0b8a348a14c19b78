"""Provenance recorded in every result: package versions, the environment lock's hash and the device."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from visor_model import lockfile
from visor_model.devices import resolve_device

PACKAGES = ("torch", "transformers", "lmms_eval", "snakemake", "pandas", "seaborn", "papermill")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def device_name(device: str = "auto") -> str:
    """The GPU's name for a CUDA device; otherwise the CPU's model name and logical core count."""
    import torch

    device = resolve_device(device)
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name)
    except OSError:
        pass
    return f"CPU {name} ({os.cpu_count()} logical cores)"


def lock_record() -> dict[str, str]:
    """The environment lock the install followed: its file name and SHA-256 (install.sh checks the venv equals it)."""
    return {"file": lockfile.LOCK.name, "sha256": lockfile.lock_sha256()}


def environment(device: str = "auto") -> dict:
    """Versions, the lock, the device (`device` as given to torch; "auto": CUDA where available), the platform."""
    return {"versions": package_versions(), "lock": lock_record(), "device": device_name(device),
            "platform": platform.platform()}
