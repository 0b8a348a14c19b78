"""The environment lock: complete, consistent with pyproject.toml, and equal to the installed environment."""

import tomllib

import pytest
from packaging.requirements import Requirement

from visor_model import lockfile, provenance


def test_the_installed_environment_equals_the_lock():
    problems = lockfile.differences(lockfile.expected(), lockfile.installed())
    assert problems == [], "\n".join(problems)


def test_every_declared_dependency_is_locked_at_a_version_it_allows():
    project = tomllib.loads((lockfile.ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    pins = lockfile.read_pins(lockfile.LOCK)
    for line in declared:
        requirement = Requirement(line)
        name = lockfile.normalize(requirement.name)
        assert name in pins, f"{requirement.name} is declared but not locked: run `bash relock.sh`"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"{requirement.name}=={pins[name]} in the lock does not satisfy {line!r}: run `bash relock.sh`"


def test_the_lock_pins_releases_and_dodges_the_broken_filelock():
    pins = lockfile.read_pins(lockfile.LOCK)
    assert len(pins) > 200 and {"pip", "setuptools", "torch", "lmms-eval"} <= pins.keys()
    assert "+" not in pins["torch"], "the lock names torch's release; each machine's index serves its build"
    assert tuple(int(part) for part in pins["filelock"].split(".")[:2]) < (4, 3)


def test_the_cuda_additions_agree_with_the_lock():
    main, cuda = lockfile.read_pins(lockfile.LOCK), lockfile.read_pins(lockfile.CUDA_LOCK)
    assert any(name.startswith("nvidia-") for name in cuda) and cuda["torch"] == main["torch"]
    assert ({name: cuda[name] for name in cuda.keys() & main.keys()}
            == {name: main[name] for name in cuda.keys() & main.keys()})


def test_the_plan_follows_the_torch_build():
    cpu, cuda = lockfile.expected("2.13.0+cpu"), lockfile.expected("2.13.0")
    assert "torchvision" not in cpu and "torchvision" in cuda
    assert any(name.startswith("nvidia-") for name in cuda) and not any(name.startswith("nvidia-") for name in cpu)


def test_differences_name_each_distribution():
    want = {"torch": "2.13.0", "filelock": "4.2.12", "numpy": "2.4.6"}
    have = {"torch": "2.13.0+cpu", "filelock": "4.3.1", "torchvision": "0.28.0"}
    assert lockfile.differences(want, have) == [
        "filelock: installed 4.3.1, locked at 4.2.12",
        "numpy: locked at 2.4.6, not installed",
        f"torchvision==0.28.0: installed, not in the lock for a CPU torch "
        f"({lockfile.NOT_WITH_CPU_TORCH['torchvision']})",
    ]


def test_a_lock_line_that_is_not_an_exact_pin_is_named(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\nnumpy==2.4.6\n    # via pandas\nfilelock>=4\n")
    with pytest.raises(ValueError, match=r"requirements.lock:4: not an exact pin .*'filelock>=4'"):
        lockfile.read_pins(lock)


def test_provenance_names_the_lock_hash():
    record = provenance.lock_record()
    assert record == {"file": "requirements.lock", "sha256": lockfile.lock_sha256()} and len(record["sha256"]) == 64
