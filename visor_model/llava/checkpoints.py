"""Load a LLaVA checkpoint from a local folder or a hub snapshot at a pinned revision, safely.

Both sources go through one function: a hub id is first materialised with `huggingface_hub.snapshot_download`
(honouring HF_HUB_OFFLINE, so a pre-populated cache works without network), then the folder is checked and
loaded. Weights are read from safetensors only; pickled weights are refused and no remote code is run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from visor_model.files import sha256_file, update_sha256

MODEL_CLASSES = {
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}
IMAGE_PROCESSORS = {
    "llava_next": (
        "transformers.models.llava_next.image_processing_pil_llava_next",
        "LlavaNextImageProcessorPil",
    ),
    "llava_onevision": (
        "transformers.models.llava_onevision.image_processing_pil_llava_onevision",
        "LlavaOnevisionImageProcessorPil",
    ),
}
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer.model"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file or setting at fault."""


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    tokenizer: object
    image_processor: object
    family: str  # "llava_next" or "llava_onevision"
    path: Path
    source: str
    revision: str | None
    # the checkpoint record's hash (provide_checkpoint), when the caller passed it; load_checkpoint never hashes
    weights_sha256: str | None = None


def resolve_checkpoint(source: str, revision: str | None = None) -> Path:
    """A local folder as is; a hub id as the snapshot of `revision` (which must be given)."""
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {source!r} is a file; expected a folder made by save_pretrained")
        return path
    if source.startswith((".", "/")) or source.count("/") != 1:
        raise CheckpointError(f"checkpoint folder {source!r} does not exist")
    if not revision:
        raise CheckpointError(
            f"hub checkpoint {source!r} needs a pinned revision (a commit hash), e.g. revision=<40-hex sha>"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=source, revision=revision, allow_patterns=SNAPSHOT_PATTERNS))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise CheckpointError(
            f"could not fetch hub checkpoint {source!r} at revision {revision}: {error.__class__.__name__}: "
            f"{str(error).splitlines()[0]} (offline runs need it in the HF cache already)"
        ) from None


def weights_sha256(path: Path) -> str:
    """sha256 over the safetensors files of a checkpoint, in name order. Minutes for a 7B model: computed once per
    checkpoint by provide_checkpoint (and train_policy for VISOR), which record it; jobs read it from the record."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        digest.update(file.name.encode())
        update_sha256(digest, file)
    return digest.hexdigest()


def weights_size(path: Path) -> dict:
    """{"parameters": tensor elements, "bytes": file bytes} of a checkpoint's safetensors, from their headers
    (nothing loaded): what the workflow sizes its jobs' memory from (visor_model.workflow_config.job_mem_mb)."""
    from safetensors import safe_open

    parameters = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                parameters += math.prod(shape)
    return {"parameters": parameters, "bytes": sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))}


def check_checkpoint_folder(path: Path) -> str:
    """Validate the folder's files before anything is loaded; returns the model family."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no config.json")
    family = json.loads(config_file.read_text()).get("model_type")
    if family not in MODEL_CLASSES:
        raise CheckpointError(
            f"checkpoint {path} has model_type {family!r}; supported: {', '.join(MODEL_CLASSES)}"
        )
    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:
        pickled = [f.name for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES]
        if pickled:
            raise CheckpointError(
                f"checkpoint {path} has only pickled weights ({', '.join(pickled)}); "
                "only safetensors are loaded, convert it with save_pretrained(safe_serialization=True)"
            )
        raise CheckpointError(f"checkpoint {path} has no *.safetensors weights")
    from safetensors import safe_open

    for file in weight_files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    handle.get_slice(name)
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"weights file {file} is truncated or corrupt: {error}") from None
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"checkpoint {path} has no tokenizer files ({' or '.join(TOKENIZER_FILES)})")
    if not (path / "preprocessor_config.json").is_file():
        raise CheckpointError(f"checkpoint {path} has no preprocessor_config.json (image processor)")
    return family


def load_image_processor(path: Path, family: str):
    import importlib

    module_name, class_name = IMAGE_PROCESSORS[family]
    return getattr(importlib.import_module(module_name), class_name).from_pretrained(str(path))


def load_checkpoint(
    source: str, revision: str | None = None, device: str = "cpu", dtype: str = "float32",
    weights_sha256: str | None = None,
) -> LoadedCheckpoint:
    """Model, tokenizer and PIL image processor of a LLaVA-NeXT or LLaVA-OneVision checkpoint. `weights_sha256`:
    the hash recorded for it (the checkpoint record's), kept as provenance; nothing is hashed here."""
    import transformers

    if dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path = resolve_checkpoint(source, revision)
    family = check_checkpoint_folder(path)
    model_class = getattr(transformers, MODEL_CLASSES[family])
    try:
        model = model_class.from_pretrained(str(path), dtype=DTYPES[dtype], use_safetensors=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"could not load weights of {path}: {error}") from None
    model.to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    processor_template = read_processor_chat_template(path)
    if processor_template is not None:
        tokenizer.chat_template = processor_template  # what HF's processor renders; the runner renders it too
    return LoadedCheckpoint(
        model=model,
        tokenizer=tokenizer,
        image_processor=load_image_processor(path, family),
        family=family,
        path=path,
        source=source,
        revision=revision,
        weights_sha256=weights_sha256,
    )


def read_processor_chat_template(path: Path) -> str | None:
    """The chat template transformers' processor would use (`ProcessorMixin.from_pretrained`, transformers 5.x).

    llava-hf checkpoints keep it beside the processor, not in the tokenizer. The processor's order: a
    `chat_template` key in processor_config.json, else the legacy chat_template.json, else chat_template.jinja
    (its default template). None when the folder has none of them (the tokenizer's own template then applies).
    """
    processor_config = path / "processor_config.json"
    if processor_config.is_file():
        template = json.loads(processor_config.read_text()).get("chat_template")
        if template is not None:
            return template
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text())["chat_template"]
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    return None


# ----------------------------------------------------------------------------------------------------------
# Providing a checkpoint to the workflow: verified, with provenance.

SHA256SUMS = "SHA256SUMS"


def write_sha256sums(path: Path) -> None:
    """Pin every file of a checkpoint folder (used when shipping reference weights in the repository)."""
    lines = [f"{sha256_file(f)}  {f.name}" for f in sorted(path.iterdir()) if f.is_file() and f.name != SHA256SUMS]
    (path / SHA256SUMS).write_text("\n".join(lines) + "\n")


def verify_sha256sums(path: Path) -> None:
    sums = path / SHA256SUMS
    if not sums.is_file():
        raise CheckpointError(f"shipped checkpoint {path} has no {SHA256SUMS} file to verify it against")
    for line in sums.read_text().splitlines():
        expected, name = line.split(maxsplit=1)
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"shipped checkpoint {path} is missing {name}")
        if sha256_file(file) != expected:
            raise CheckpointError(f"{file} does not match its pinned sha256 in {SHA256SUMS}: corrupt or modified")


def verify_hub_snapshot(path: Path) -> None:
    """Files of a hub snapshot are links to blobs named by their hash; large (LFS) files are named by sha256,
    so their content can be checked against the pinned revision's hashes."""
    for file in path.iterdir():
        if file.is_symlink():
            blob = Path(os.path.realpath(file))
            if len(blob.name) == 64 and sha256_file(blob) != blob.name:
                raise CheckpointError(f"{file} does not match the sha256 {blob.name} of the pinned revision")


def provide_checkpoint(spec: dict, source: str, trained_dir: Path) -> dict:
    """Resolve and verify a configured checkpoint; returns the record downstream jobs load it from."""
    checkpoint = spec["checkpoint"]
    revision = None
    if source == "shipped":
        path = Path(checkpoint["path"])
        if not path.is_dir():
            raise CheckpointError(f"shipped checkpoint folder {path} does not exist")
        verify_sha256sums(path)
    elif source == "train":
        path = Path(trained_dir)
    elif source == "hub":
        revision = checkpoint.get("revision")
        if "repo" not in checkpoint:
            raise CheckpointError("a hub checkpoint needs checkpoint.repo (e.g. llava-hf/llava-v1.6-vicuna-7b-hf)")
        path = resolve_checkpoint(checkpoint["repo"], revision)
        verify_hub_snapshot(path)
    else:
        raise CheckpointError(f"unknown checkpoint source {source!r}; expected shipped, train or hub")
    family = check_checkpoint_folder(path)
    if family != spec["family"]:
        raise CheckpointError(f"checkpoint {path} is a {family} model but the config says {spec['family']}")
    return {
        "path": str(path),
        "source": source,
        "repo": checkpoint.get("repo"),
        "revision": revision,
        "family": family,
        "weights_sha256": weights_sha256(path),
        "size": weights_size(path),
    }
