"""Provenance recorded in every result: package versions and the device."""

from __future__ import annotations

import os
import platform
from importlib import metadata

PACKAGES = ("torch", "transformers", "lmms_eval", "snakemake", "pandas", "seaborn", "papermill")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def environment() -> dict:
    return {"versions": package_versions(), "device": device_name(), "platform": platform.platform()}
