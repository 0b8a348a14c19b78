#!/usr/bin/env bash
# Regenerate the environment lock from pyproject.toml and requirements.in: a reviewed step, committed as a diff
# of the lock that CI then tests.
#
#   bash relock.sh                              keep every pin that still satisfies the declared dependencies
#   bash relock.sh --upgrade-package filelock   move one distribution to its newest allowed release
#   bash relock.sh --upgrade                    move everything
#
# requirements.lock       every distribution of the environment, resolved with the torch build of this machine
#                         (the CPU build here), written without its local version label (torch==2.13.0)
# requirements-cuda.lock  what the CUDA build of that torch adds on Linux x86_64 (nvidia-*, triton), resolved
#                         from the package index within requirements.lock's pins
# The lock tools live in a throwaway venv (.venv-lock), pinned themselves.
set -euo pipefail
cd "$(dirname "$0")"
TOOLS="${TOOLS:-.venv-lock}"
if [ ! -x "$TOOLS/bin/pip-compile" ] || [ ! -x "$TOOLS/bin/uv" ]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check pip-tools==7.6.2 uv==0.13.9
fi

CUSTOM_COMPILE_COMMAND="bash relock.sh" "$TOOLS/bin/pip-compile" --quiet --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --extra test --output-file requirements.lock "$@" \
    pyproject.toml requirements.in
# The CPU wheel is torch==X+cpu; the lock names the release, which each machine's index serves in its own build.
sed -i -E 's/^torch==([^+[:space:]]+)\+[[:alnum:].]+/torch==\1/' requirements.lock

printf 'torch\ntorchvision\n' | "$TOOLS/bin/uv" pip compile --quiet --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --custom-compile-command "bash relock.sh" \
    --constraint requirements.lock --output-file requirements-cuda.lock -
echo "requirements.lock: $(grep -c '==' requirements.lock) pins; requirements-cuda.lock: $(grep -c '==' requirements-cuda.lock) pins"
