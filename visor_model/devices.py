"""What the device "auto" means everywhere (the plugins, VISOR's training, the speed bench, the provenance
records, the workflow's memory estimates): a CUDA GPU where there is one, else the CPU."""

from __future__ import annotations


def resolve_device(device: str | None = "auto", cuda_available: bool | None = None) -> str:
    """"auto" (or None, ""): "cuda" where there is a GPU, else "cpu"; any other name as given. `cuda_available`:
    whether there is a GPU, where the caller knows without torch (the workflow); by default torch is asked."""
    if device not in (None, "", "auto"):
        return device
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return "cuda" if cuda_available else "cpu"
