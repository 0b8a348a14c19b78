"""Shared fixtures: tiny models of the real reference geometry, saved checkpoints, synthetic task folders."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from visor_model.llava.runner import VisionLanguageRunner, prompt_ids  # noqa: E402
from visor_model.reference import tasks  # noqa: E402
from visor_model.reference.models import ReferenceConfig, build_reference_model, build_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("llava_next", "llava_onevision")


def tiny_config(family: str) -> ReferenceConfig:
    """The reference geometry (48 px crops, 8 px patches: 6 x 6 patches per crop), smaller widths."""
    return ReferenceConfig(
        family=family, vision_hidden=32, vision_layers=3, vision_heads=2,
        text_hidden=32, text_layers=2, text_heads=2, text_kv_heads=1, text_intermediate=64,
    )


def noise_images(sizes, seed=0):
    """Random RGB images of the given (height, width) sizes."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


# (height, width): 2x2, 2x2 un-padded, 1x2, 2x1, tiny, very wide (sub-images fully un-padded away): every AnyRes case
# the reducers' per-crop rules meet
ANYRES_IMAGE_SIZES = ((96, 96), (60, 100), (48, 100), (150, 40), (10, 10), (40, 800))


@torch.no_grad()
def encode_noise(loaded, sizes, seed=0):
    """The vision side (with the encoder's hidden states) of noise images of `sizes` through `loaded`'s pipeline."""
    from visor_model.llava.visual import encode_images

    processed = loaded.image_processor(noise_images(sizes, seed), return_tensors="pt")
    return encode_images(loaded.model, processed["pixel_values"], processed["image_sizes"], return_hidden_states=True)


@torch.no_grad()
def llm_logits(loaded, reducer, image, question="what colour is the square"):
    """process_images -> visual_tokens -> splice -> language model, batch of one."""
    runner = VisionLanguageRunner(loaded, reducer)
    pixel_values, image_sizes = runner.process_images([image])
    prompt = prompt_ids(loaded.tokenizer, loaded.model.config.image_token_id, question)
    _, kept = runner.visual_tokens(pixel_values, image_sizes, ["sample"])
    batch = runner.splice([prompt], kept)
    hidden = loaded.model.model.language_model(
        inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).last_hidden_state
    return loaded.model.lm_head(hidden)


def micro_workdir(tmp_path: Path, edit=None) -> Path:
    """A copy of the micro config in a fresh working directory (shipped paths made absolute)."""
    config = yaml.safe_load((REPO / ".test" / "config" / "config.yaml").read_text())
    for model in config["models"].values():
        if model["checkpoint"]["source"] == "shipped":
            model["checkpoint"]["path"] = str((REPO / ".test" / model["checkpoint"]["path"]).resolve())
    if edit is not None:
        edit(config)
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def save_checkpoint(model, tokenizer, image_processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer for the tests' one question about a coloured square."""
    return build_tokenizer(["what", "colour", "is", "the", "square", "red", "blue"])


@pytest.fixture(scope="module", params=["llava_next", "llava_onevision"])
def tiny(request, tokenizer):
    """A tiny random model of each family (eval mode) with its image processor and the tokenizer."""
    model, processor = build_reference_model(tiny_config(request.param), tokenizer, seed=0)
    return SimpleNamespace(family=request.param, model=model.eval(), image_processor=processor, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def benchmark_tokenizer():
    return build_tokenizer(tasks.vocabulary())


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_checkpoint(request, tmp_path_factory, benchmark_tokenizer):
    """A saved, randomly initialised tiny checkpoint of each family (folder path)."""
    model, processor = build_reference_model(tiny_config(request.param), benchmark_tokenizer, seed=0)
    return save_checkpoint(model, benchmark_tokenizer, processor, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def next_checkpoint(tmp_path_factory, benchmark_tokenizer):
    """One saved tiny LLaVA-NeXT checkpoint, for tests that need a model but not both families."""
    model, processor = build_reference_model(tiny_config("llava_next"), benchmark_tokenizer, seed=0)
    return save_checkpoint(model, benchmark_tokenizer, processor, tmp_path_factory.mktemp("next"))


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory):
    """A small synth_marker lmms-eval task folder."""
    folder = tmp_path_factory.mktemp("tasks") / "synth_marker"
    tasks.write_task("synth_marker", folder, {"train": 8, "val": 4, "test": 8}, seed=0)
    return folder


def loaded_view(model, tokenizer, image_processor):
    return SimpleNamespace(model=model.eval(), tokenizer=tokenizer, image_processor=image_processor)
