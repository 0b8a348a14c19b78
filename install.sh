#!/usr/bin/env bash
# Install the project into a virtual environment (default .venv; set VENV to change it).
#
# torch goes in first, pinned, and every later pip call is constrained to it, so that no dependency can pull a
# different torch build. On a machine without an NVIDIA GPU that is the CPU build, and the CUDA torchvision that
# lmms-eval drags in is removed: it cannot load against CPU torch and breaks `import transformers`.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip setuptools wheel
"${PIP[@]}" install -q -c constraints.txt torch
"${PIP[@]}" install -q -c constraints.txt -e ".[test]"
if "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.__version__.endswith('+cpu') else 1)"; then
    "${PIP[@]}" uninstall -q -y torchvision 2>/dev/null || true
fi
"$VENV/bin/python" -c "import torch, transformers, lmms_eval; print(f'installed: torch {torch.__version__}, transformers {transformers.__version__}, lmms-eval 0.7.3 into $VENV')"
