"""The plugins' model args: what `evaluate` passes to lmms-eval and `measure_latency` to the plugin class, so that
both build the same method. Import-light (no lmms-eval, no torch): the workflow scripts and `lmms_plugins.run`
import it."""

from __future__ import annotations

from pathlib import Path


def model_args(checkpoint_path: str | Path, setting: dict, evaluation: dict) -> dict:
    """The model args of a method's `setting` (its method args) on the checkpoint at `checkpoint_path` (resolved),
    with the evaluation config's device and dtype."""
    return {"pretrained": str(Path(checkpoint_path).resolve()), "device": evaluation["device"],
            "dtype": evaluation["dtype"], **setting}


def model_args_string(args: dict) -> str:
    """lmms-eval's `k=v,k2=v2` form (its Python API does not accept a dict)."""
    for key, value in args.items():
        if any(c in str(value) for c in ",="):
            raise ValueError(f"model arg {key}={value!r} cannot contain ',' or '='")
    return ",".join(f"{key}={value}" for key, value in args.items() if value is not None)
