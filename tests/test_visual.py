"""The input pipeline: exact equivalence with the stock model, token metadata, random dropping."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, llm_logits, loaded_view, noise_images, tiny_config

from visor_model.llava.runner import VisionLanguageRunner, prompt_ids, to_rgb
from visor_model.llava.visual import encode_images
from visor_model.methods.base import FullTokens, RandomDrop, check_budget, tokens_for_budget
from visor_model.reference.models import build_reference_model, build_tokenizer

SIZES = ((96, 96), (60, 144), (112, 84), (40, 800), (10, 10))


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    tokenizer = build_tokenizer(["what", "colour", "is", "the", "square", "red", "blue"])
    model, processor = build_reference_model(tiny_config(request.param), tokenizer, seed=0)
    return loaded_view(model, tokenizer, processor)


@pytest.mark.parametrize("size", SIZES)
@torch.no_grad()
def test_full_tokens_give_exactly_the_stock_models_logits(tiny, size):
    """Our encode -> splice path equals transformers' own forward (input_ids with expanded <image>)."""
    image = noise_images([size])[0]
    ours = llm_logits(tiny, FullTokens(), image)
    processed = tiny.image_processor([image], return_tensors="pt")
    prompt = prompt_ids(tiny.tokenizer, tiny.model.config.image_token_id, "what colour is the square")
    n_visual = ours.shape[1] - (len(prompt) - 1)
    cut = prompt.index(tiny.model.config.image_token_id)
    input_ids = torch.tensor([prompt[:cut] + [tiny.model.config.image_token_id] * n_visual + prompt[cut + 1 :]])
    stock = tiny.model(input_ids=input_ids, pixel_values=processed["pixel_values"],
                       image_sizes=processed["image_sizes"]).logits
    assert torch.equal(ours, stock)


@torch.no_grad()
def test_token_metadata_matches_the_anyres_layout(tiny):
    processed = tiny.image_processor(noise_images(SIZES), return_tensors="pt")
    vision = encode_images(tiny.model, processed["pixel_values"], processed["image_sizes"])
    side = tiny.model.config.vision_config.image_size // tiny.model.config.vision_config.patch_size
    for image in vision.images:
        rows, cols = image.grid
        base = image.partition == 0
        assert int(base.sum()) == side * side  # the full image is never un-padded
        assert set(image.partition[~image.is_newline & ~base].tolist()) <= set(range(1, rows * cols + 1))
        # one newline token closes every row of the un-padded sub-image canvas
        n_newlines = int(image.is_newline.sum())
        canvas = image.features.shape[0] - side * side - n_newlines
        assert canvas % n_newlines == 0 if n_newlines else canvas == 0
        assert image.patch_index[image.is_newline].eq(-1).all()
        assert image.patch_index[~image.is_newline].lt(side * side).all()


@pytest.mark.parametrize("budget", [0.05, 0.2, 0.5, 1.0])
@torch.no_grad()
def test_random_drop_keeps_exactly_the_budget_and_every_newline(tiny, budget):
    processed = tiny.image_processor(noise_images(SIZES), return_tensors="pt")
    vision = encode_images(tiny.model, processed["pixel_values"], processed["image_sizes"])
    kept = RandomDrop(budget, seed=3).reduce(tiny.model, vision, [str(i) for i in range(len(SIZES))])
    for full, reduced in zip(vision.images, kept):
        assert reduced.num_patch_tokens == tokens_for_budget(budget, full.num_patch_tokens)
        assert int(reduced.is_newline.sum()) == int(full.is_newline.sum())


@torch.no_grad()
def test_random_drop_depends_only_on_seed_and_sample(tiny):
    """The same sample keeps the same tokens whatever else is in its batch; another seed keeps others."""
    images = noise_images(SIZES[:3])
    runner = VisionLanguageRunner(tiny, RandomDrop(0.3, seed=1))
    pixels, sizes = runner.process_images(images)
    _, together = runner.visual_tokens(pixels, sizes, ["a", "b", "c"])
    pixels_alone, sizes_alone = runner.process_images(images[1:2])
    _, alone = runner.visual_tokens(pixels_alone, sizes_alone, ["b"])
    assert torch.equal(together[1].patch_index, alone[0].patch_index)
    assert torch.equal(together[1].features, alone[0].features)
    _, other_seed = VisionLanguageRunner(tiny, RandomDrop(0.3, seed=2)).visual_tokens(pixels, sizes, ["a", "b", "c"])
    assert not torch.equal(together[0].patch_index, other_seed[0].patch_index)


@pytest.mark.parametrize("bad", [0, 1.5, -1, "abc", float("nan"), None])
def test_budget_outside_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="budget"):
        check_budget(bad)


def test_empty_question_is_refused(tiny):
    with pytest.raises(ValueError, match="question is empty"):
        prompt_ids(tiny.tokenizer, tiny.model.config.image_token_id, "  ")


@pytest.mark.parametrize("mode,size", [("L", (30, 40)), ("RGBA", (50, 50)), ("P", (64, 32)), ("RGB", (1, 1)),
                                       ("RGB", (8000, 200))])
def test_odd_images_are_answered(tiny, mode, size):
    from PIL import Image

    image = Image.new(mode, size)
    assert to_rgb(image).mode == "RGB"
    records = VisionLanguageRunner(tiny, FullTokens()).generate([image], ["what colour is the square"], ["k"], [2])
    assert records[0].visual_tokens > 0 and records[0].generated_tokens <= 2
