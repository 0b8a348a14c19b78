"""Loading checkpoints: the local and the hub path, verification, and clear refusals."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from visor_model.files import sha256_file
from visor_model.llava.checkpoints import (
    CheckpointError,
    load_checkpoint,
    provide_checkpoint,
    resolve_checkpoint,
    weights_sha256,
    write_sha256sums,
)

REVISION = "0123456789abcdef0123456789abcdef01234567"


def copy_checkpoint(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def test_roundtrip_loads_the_saved_weights(tiny_checkpoint):
    loaded = load_checkpoint(str(tiny_checkpoint))
    assert loaded.family in ("llava_next", "llava_onevision")
    assert loaded.tokenizer.chat_template is not None
    assert loaded.weights_sha256 is None  # hashed once by provide_checkpoint, not on every load
    assert not loaded.model.training


def test_loading_never_hashes_the_weights(tiny_checkpoint, monkeypatch):
    """Every evaluation loads the checkpoint: re-hashing a 7B model's 14 GB there took minutes per job."""
    from visor_model.llava import checkpoints

    def refuse(*args):
        raise AssertionError("load_checkpoint hashed the weights")

    monkeypatch.setattr(checkpoints, "update_sha256", refuse)
    monkeypatch.setattr(checkpoints, "sha256_file", refuse)
    assert load_checkpoint(str(tiny_checkpoint), weights_sha256="ab" * 32).weights_sha256 == "ab" * 32


def test_the_record_has_the_hash_and_size_of_the_weights(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file

    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    write_sha256sums(folder)
    family = load_checkpoint(str(folder)).family
    record = provide_checkpoint({"family": family, "checkpoint": {"source": "shipped", "path": str(folder)}},
                                "shipped", tmp_path)
    assert record["weights_sha256"] == weights_sha256(folder)
    tensors = [t for f in sorted(folder.glob("*.safetensors")) for t in load_file(str(f)).values()]
    assert record["size"] == {"parameters": sum(t.numel() for t in tensors),
                              "bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors"))}
    assert all(t.dtype == torch.float32 for t in tensors)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope"))


def test_truncated_safetensors_is_named(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        load_checkpoint(str(folder))


def test_missing_tokenizer_and_processor_files(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        load_checkpoint(str(folder))
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt2")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        load_checkpoint(str(folder))


def test_pickle_only_checkpoint_is_refused(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    torch.save({"weight": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickled weights .*pytorch_model.bin"):
        load_checkpoint(str(folder))


def test_hub_id_needs_a_pinned_revision():
    with pytest.raises(CheckpointError, match="needs a pinned revision"):
        resolve_checkpoint("llava-hf/llava-v1.6-vicuna-7b-hf", None)


def test_hub_snapshot_missing_offline_is_explained(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="could not fetch .*tiny-org/absent.* at revision"):
        resolve_checkpoint("tiny-org/absent", REVISION)


def populate_hub_cache(cache: Path, repo: str, revision: str, files_from: Path) -> Path:
    """Lay out a checkpoint as huggingface_hub's cache does: blobs named by sha256, snapshot links to them."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    (root / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    for file in files_from.iterdir():
        blob = root / "blobs" / sha256_file(file)
        shutil.copy(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    return root


def test_hub_path_offline_from_a_prepopulated_cache(tiny_checkpoint, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    root = populate_hub_cache(tmp_path / "hub", "tiny-org/tiny-llava", REVISION, tiny_checkpoint)
    family = load_checkpoint(str(tiny_checkpoint)).family
    spec = {"family": family, "checkpoint": {"source": "hub", "repo": "tiny-org/tiny-llava", "revision": REVISION}}
    record = provide_checkpoint(spec, "hub", tmp_path / "unused")
    assert record["revision"] == REVISION and Path(record["path"]).name == REVISION
    assert load_checkpoint("tiny-org/tiny-llava", REVISION).family == family
    assert record["weights_sha256"] == weights_sha256(tiny_checkpoint)
    # a blob whose content no longer matches the pinned hash is refused
    blob = next(b for b in (root / "blobs").iterdir() if b.stat().st_size > 100_000)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        provide_checkpoint(spec, "hub", tmp_path / "unused")


def test_shipped_checkpoint_is_verified_against_its_sums(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    family = load_checkpoint(str(folder)).family
    spec = {"family": family, "checkpoint": {"source": "shipped", "path": str(folder)}}
    with pytest.raises(CheckpointError, match="no SHA256SUMS"):
        provide_checkpoint(spec, "shipped", tmp_path)
    write_sha256sums(folder)
    assert provide_checkpoint(spec, "shipped", tmp_path)["family"] == family
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    with pytest.raises(CheckpointError, match="config.json does not match its pinned sha256"):
        provide_checkpoint(spec, "shipped", tmp_path)
    wrong = {"family": "llava_next" if family == "llava_onevision" else "llava_onevision",
             "checkpoint": spec["checkpoint"]}
    write_sha256sums(folder)
    with pytest.raises(CheckpointError, match="but the config says"):
        provide_checkpoint(wrong, "shipped", tmp_path)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_shipped_reference_checkpoints_verify(family):
    """The reference weights committed in checkpoints/ match their pinned sums and load."""
    name = {"llava_next": "reference_next", "llava_onevision": "reference_ov"}[family]
    folder = Path(__file__).resolve().parent.parent / "checkpoints" / name
    record = provide_checkpoint({"family": family, "checkpoint": {"source": "shipped", "path": str(folder)}},
                                "shipped", folder)
    assert record["family"] == family
