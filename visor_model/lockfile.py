"""The environment lock: which distributions this machine's venv must hold, and whether it holds exactly those.

`requirements.lock` pins every distribution of the environment; `requirements-cuda.lock` adds what the CUDA build
of torch needs. Which applies follows from the torch build that is installed (install.sh installs torch first):

- a CPU build (`2.13.0+cpu`): the lock without torchvision, whose wheels need a CUDA torch and break
  `import transformers` beside a CPU one;
- any other build: the lock and the CUDA additions.

Standard library only: install.sh runs it (`python -m visor_model.lockfile plan|extras|check`) before the project
itself is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
CUDA_LOCK = ROOT / "requirements-cuda.lock"
PROJECT = "visor-hired-audit"
NOT_WITH_CPU_TORCH = {"torchvision": "its wheels need a CUDA torch and break `import transformers` beside a CPU one"}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#\\]+)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """{normalized name: version} of every `name==version` line of a compiled lock."""
    pins = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: not an exact pin (name==version): {line!r}")
        pins[normalize(match.group(1))] = match.group(2)
    return pins


def lock_sha256(path: Path = LOCK) -> str:
    """SHA-256 of the lock file's bytes: the environment a result was produced in."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def release(version: str) -> str:
    """A version without its local label: 2.13.0+cpu -> 2.13.0 (the lock names releases)."""
    return version.split("+", 1)[0]


def installed() -> dict[str, str]:
    """{normalized name: version} of the distributions in this interpreter's environment, the project excepted."""
    found = {normalize(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    found.pop(PROJECT, None)
    return found


def expected(torch_version: str | None = None) -> dict[str, str]:
    """The pins this environment must hold, for the installed torch build (see the module docstring)."""
    pins = read_pins(LOCK)
    torch_version = torch_version or installed().get("torch")
    if torch_version is None:
        raise RuntimeError("torch is not installed: install it from the lock first (install.sh does)")
    if torch_version.endswith("+cpu"):
        for name in NOT_WITH_CPU_TORCH:
            pins.pop(name, None)
    else:
        pins.update(read_pins(CUDA_LOCK))
    return pins


def differences(want: dict[str, str], have: dict[str, str]) -> list[str]:
    """One line per distribution that differs between the lock's pins and the environment; empty when equal."""
    problems = []
    for name in sorted(want.keys() | have.keys()):
        if name not in have:
            problems.append(f"{name}: locked at {want[name]}, not installed")
        elif name not in want:
            reason = NOT_WITH_CPU_TORCH.get(name)
            problems.append(f"{name}=={have[name]}: installed, not in the lock"
                            + (f" for a CPU torch ({reason})" if reason else ""))
        elif release(have[name]) != want[name]:
            problems.append(f"{name}: installed {have[name]}, locked at {want[name]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visor_model.lockfile", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("torch", "plan", "extras", "check", "hash"),
                        help="torch: the locked torch requirement; plan: the requirements to install here; "
                             "extras: installed distributions the lock does not name; check: exit 1 unless the "
                             "environment equals the lock; hash: the lock's SHA-256")
    command = parser.parse_args(argv).command
    if command == "torch":
        print(f"torch=={read_pins(LOCK)['torch']}")
    elif command == "hash":
        print(lock_sha256())
    elif command == "plan":
        print("\n".join(f"{name}=={version}" for name, version in sorted(expected().items())))
    elif command == "extras":
        print("\n".join(sorted(installed().keys() - expected().keys())))
    else:
        want, have = expected(), installed()
        problems = differences(want, have)
        if problems:
            print(f"the environment differs from {LOCK.name} in {len(problems)} distributions:", file=sys.stderr)
            print("\n".join(f"  {line}" for line in problems), file=sys.stderr)
            return 1
        print(f"environment equals {LOCK.name} (sha256 {lock_sha256()[:12]}): {len(want)} distributions pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
