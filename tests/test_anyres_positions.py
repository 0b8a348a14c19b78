"""Where each packed visual token's features come from, at LLaVA-OneVision's real image-side geometry.

`anyres_max_9` downsamples a large un-padded sub-image canvas bilinearly; the positions `encode_images` records
must be those of the patches the features are sampled from. The geometry is llava-onevision-qwen2-0.5b-ov-hf's
(384 px crops, 14 px patches -> 27 x 27 = 729 tokens per crop, its 36 grid pinpoints, SigLIP without CLS,
feature strategy "full") with a random, 16-wide one-layer tower: only the geometry matters here.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import FAMILIES, noise_images, tiny_config
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, SiglipVisionConfig
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from visor_model.llava.visual import NEWLINE, _pack, crops_per_image, encode_images
from visor_model.methods.base import tokens_for_budget
from visor_model.methods.hired import HiRED, content_box
from visor_model.reference.models import build_reference_model, build_tokenizer

CROP, PATCH, SIDE = 384, 14, 27
ONEVISION_PINPOINTS = [[CROP * r, CROP * c] for r in range(1, 7) for c in range(1, 7)]  # the 0.5b-ov-hf config
# (height, width): documents both ways round, the largest canvas, a wide strip; all downsampled by anyres_max_9
DOWNSAMPLED = ((2200, 1700), (1700, 2200), (2304, 2304), (1500, 2600), (900, 1700))
NOT_DOWNSAMPLED = ((480, 640), (1024, 1024), (3000, 800), (384, 384), (300, 2000))


@pytest.fixture(scope="module")
def onevision():
    torch.manual_seed(0)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=1, image_size=CROP, patch_size=PATCH).to_dict(),
        text_config=Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=1, num_key_value_heads=1).to_dict(),
        image_token_index=3,
        image_grid_pinpoints=ONEVISION_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    processor = LlavaOnevisionImageProcessorPil(size={"height": CROP, "width": CROP},
                                                image_grid_pinpoints=ONEVISION_PINPOINTS,
                                                image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), resample=3)
    return model, processor


@torch.no_grad()
def encode(model, processor, size):
    """(VisionOutputs of one noise image of (height, width) `size`, the processor's output)."""
    processed = processor(noise_images([size]), return_tensors="pt")
    vision = encode_images(model, processed["pixel_values"], processed["image_sizes"], return_hidden_states=True)
    return vision, processed


def canvas_position(image):
    """(row, col) on the sub-image canvas of every recorded sub-image token (the test's own map)."""
    sub = image.partition >= 1
    crop, patch = image.partition[sub] - 1, image.patch_index[sub]
    cols = image.grid[1]
    return (crop // cols) * SIDE + patch // SIDE, (crop % cols) * SIDE + patch % SIDE


@torch.no_grad()
def source_weights(model, image_size, grid, axis: int) -> torch.Tensor:
    """[n_tokens, extent]: the weight of every canvas row (axis 0) or column (axis 1) in every packed token,
    from the model's own packing of one-hot features (the base crop and newlines get zero features)."""
    rows, cols = grid
    extent = (rows, cols)[axis] * SIDE
    crop = torch.arange(rows * cols)[:, None]
    patch = torch.arange(SIDE * SIDE)[None, :]
    position = (crop // cols) * SIDE + patch // SIDE if axis == 0 else (crop % cols) * SIDE + patch % SIDE
    one_hot = torch.nn.functional.one_hot(position, extent).float()  # [rows * cols, P, extent]
    features = torch.cat([torch.zeros(1, SIDE * SIDE, extent), one_hot])
    packed, _ = model.model.pack_image_features([features], image_size[None], image_newline=torch.zeros(extent),
                                                vision_aspect_ratio=model.config.vision_aspect_ratio)
    return packed[0]


@pytest.mark.parametrize("size", DOWNSAMPLED + NOT_DOWNSAMPLED)
def test_every_token_records_the_patch_its_features_come_from(onevision, size):
    model, processor = onevision
    vision, processed = encode(model, processor, size)
    image = vision.images[0]
    sub = image.partition >= 1
    row, col = canvas_position(image)
    for axis, recorded in ((0, row), (1, col)):
        weights = source_weights(model, processed["image_sizes"][0], image.grid, axis)
        assert weights.shape[0] == image.features.shape[0]  # the same packing, token for token
        assert bool(weights[~sub].eq(0).all())  # base-image and newline tokens sample no canvas patch
        weights = weights[sub]
        contributing = weights > 1e-6
        offsets = (torch.arange(weights.shape[1])[None, :] - recorded[:, None]).abs()
        assert int(offsets[contributing].max()) <= 1  # every patch the features blend is within 1 of the record
        recorded_weight = weights.gather(1, recorded[:, None]).squeeze(1)
        assert bool((recorded_weight >= weights.max(dim=1).values - 1e-6).all())  # the record: the largest weight
    assert len(set(zip(row.tolist(), col.tolist()))) == int(sub.sum())  # no two tokens claim the same patch
    assert torch.equal(image.patch_index[image.partition == 0], torch.arange(SIDE * SIDE))
    assert bool(image.patch_index[image.is_newline].eq(NEWLINE).all())


def test_a_2200_by_1700_document_is_downsampled_and_keeps_its_content_box(onevision):
    """The document case of the issue: a 6 x 5 grid (162 x 135 patches), un-padded to 162 x 125 (1700 / 2200 x 162
    = 125.2 columns, centred: 5 columns of padding each side), downsampled by sqrt(162 x 125 / (9 x 729)) to
    92 rows of 71 tokens. HiRED's content box (from the recorded positions) is the un-padded content."""
    model, processor = onevision
    vision, processed = encode(model, processor, (2200, 1700))
    image = vision.images[0]
    assert image.grid == (6, 5)
    rows = int(image.is_newline.sum())
    assert (rows, (image.features.shape[0] - SIDE * SIDE - rows) // rows) == (92, 71)
    assert content_box(image) == (0.0, 162.0, 5.0, 130.0)
    (kept,), (allocation,) = HiRED(budget=0.2, model=model).reduce_with_allocations(model, vision, ["doc"])
    assert kept.num_patch_tokens == tokens_for_budget(0.2, image.num_patch_tokens) == sum(allocation.kept)
    assert allocation.kept == allocation.partition_budgets
    # the integer-index positions put most sub-image tokens more than 2 patches from where their features are from
    (before,) = integer_index_positions(model, processed["pixel_values"], processed["image_sizes"])
    row, col = canvas_position(image)
    row_before, col_before = canvas_position(replace(image, partition=before[:, 0], patch_index=before[:, 1]))
    far = torch.maximum((row - row_before).abs(), (col - col_before).abs()) > 2
    assert float(far.float().mean()) > 0.8


@torch.no_grad()
def integer_index_positions(model, pixel_values, image_sizes):
    """The positions as recorded before canvas coordinates: (crop, raster patch) indices pushed through the
    packing and rounded (right wherever the packing only un-pads)."""
    n_patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    positions = []
    for n_crops in crops_per_image(model, image_sizes):
        crop = torch.arange(n_crops, dtype=torch.float32)[:, None].expand(n_crops, n_patches)
        patch = torch.arange(n_patches, dtype=torch.float32)[None, :].expand(n_crops, n_patches)
        positions.append(torch.stack([crop, patch], dim=-1))
    packed = _pack(model, positions, image_sizes, torch.full((2,), float(NEWLINE)))
    return [p.round().long() for p in packed]


@pytest.mark.parametrize("size", NOT_DOWNSAMPLED)
def test_positions_without_downsampling_are_the_integer_index_positions(onevision, size):
    model, processor = onevision
    vision, processed = encode(model, processor, size)
    image = vision.images[0]
    (before,) = integer_index_positions(model, processed["pixel_values"], processed["image_sizes"])
    assert torch.equal(image.partition, before[:, 0]) and torch.equal(image.patch_index, before[:, 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_model_positions_are_the_integer_index_positions(family):
    """The shipped reference geometry (48 px crops, at most 3 sub-images) is never downsampled."""
    model, processor = build_reference_model(tiny_config(family), build_tokenizer(["what"]), seed=0)
    sizes = ((96, 96), (60, 144), (112, 84), (40, 800), (10, 10), (150, 40), (48, 100))
    processed = processor(noise_images(sizes), return_tensors="pt")
    with torch.no_grad():
        images = encode_images(model.eval(), processed["pixel_values"], processed["image_sizes"]).images
    for image, before in zip(images, integer_index_positions(model, processed["pixel_values"],
                                                             processed["image_sizes"])):
        assert torch.equal(image.partition, before[:, 0]) and torch.equal(image.patch_index, before[:, 1])
