#!/usr/bin/env bash
# Install the project into a virtual environment (default .venv; set VENV to change it), exactly as locked.
#
# Every distribution comes from requirements.lock (made by `bash relock.sh`), installed without dependency
# resolution, so a fresh install equals the tested environment. torch goes first: its build decides the rest
# (visor_model/lockfile.py): with the CPU build, the lock without torchvision; with a CUDA build, the lock and
# requirements-cuda.lock. A rerun over an existing venv removes what the lock does not name. The install ends by
# checking that the environment equals the lock, naming every distribution that differs.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
LOCK=(env PYTHONPATH="$PWD" "$VENV/bin/python" -m visor_model.lockfile)
plan="$(mktemp)"
trap 'rm -f "$plan"' EXIT

"${PIP[@]}" install -q --no-deps "$("${LOCK[@]}" torch)"
"${LOCK[@]}" plan > "$plan"
"${PIP[@]}" install -q --no-deps -r "$plan"
"${LOCK[@]}" extras | xargs -r "${PIP[@]}" uninstall -q -y
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
"${LOCK[@]}" check
"$VENV/bin/python" -c "import torch, transformers, lmms_eval; print(f'installed into $VENV: torch {torch.__version__}, transformers {transformers.__version__}')"
