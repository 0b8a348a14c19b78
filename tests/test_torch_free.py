"""The accounting, audit and report layers import without torch: they read result tables and configs only.

Each check runs the same interpreter in a subprocess with ``sys.modules["torch"] = None`` set before any import,
so any ``import torch`` (or ``import torch.nn``, or a dependency that imports torch) raises ImportError there.
`latency` and `speed_bench` time real models and need torch; they are not listed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TORCH_FREE = {
    "visor_model.efficiency": [
        "visor_model.efficiency.shapes", "visor_model.efficiency.flops", "visor_model.efficiency.accounting",
    ],
    "visor_model.audit": ["visor_model.audit.tables", "visor_model.audit.analysis", "visor_model.audit.claims"],
    "visor_model.reporting": [
        "visor_model.reporting.figures", "visor_model.reporting.notebook", "visor_model.reporting.render",
    ],
}

PROBE = r"""
import importlib, json, sys, traceback

sys.modules["torch"] = None  # from here on `import torch` raises ImportError
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("torch was not blocked")
failures = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc()
print(json.dumps(failures))
"""


def import_without_torch(modules: list[str]) -> dict[str, str]:
    """{module: traceback} for each of `modules` that fails to import with torch blocked (empty: all import)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, MPLBACKEND="Agg"), check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", sorted(TORCH_FREE))
def test_package_and_its_torch_free_modules_import_without_torch(package):
    failures = import_without_torch([package, *TORCH_FREE[package]])
    assert not failures, "\n".join(f"{name} needs torch:\n{trace}" for name, trace in failures.items())


def test_the_probe_does_block_torch():
    """A module that does import torch fails in the probe: the check above cannot pass vacuously."""
    failures = import_without_torch(["visor_model.efficiency.latency"])
    assert list(failures) == ["visor_model.efficiency.latency"]
    assert "torch" in failures["visor_model.efficiency.latency"]
