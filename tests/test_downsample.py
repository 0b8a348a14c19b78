"""Downsample (visor_model.methods.downsample): a lower-resolution input through the runner's input hooks; the
base model at full resolution, the crops actually encoded, the budget's size search, the errors."""

from __future__ import annotations

import pytest
import torch
from conftest import llm_logits, noise_images

from visor_model.llava.runner import VisionLanguageRunner, prompt_ids
from visor_model.llava.visual import encode_images, patch_token_count
from visor_model.methods.base import FullTokens, tokens_for_budget
from visor_model.methods.downsample import Downsample, scaled_size

QUESTION = "what colour is the square"
# (height, width): 2x2, 2x2 un-padded, 1x3, 2x1 of the reference geometry (48 px crops), tiny, very wide
IMAGE_SIZES = ((96, 96), (60, 100), (60, 144), (120, 96), (10, 10), (40, 800))


@torch.no_grad()
def greedy_ids(loaded, reducer, images, limit=6):
    runner = VisionLanguageRunner(loaded, reducer)
    pixel_values, image_sizes = runner.process_images(images)
    _, kept = runner.visual_tokens(pixel_values, image_sizes, [str(i) for i in range(len(images))])
    prompts = [prompt_ids(loaded.tokenizer, loaded.model.config.image_token_id, QUESTION)] * len(images)
    return runner.decode(runner.splice(prompts, kept), [limit] * len(images), [[]] * len(images)).token_ids


@pytest.mark.parametrize("reducer", [Downsample("scale", budget=1.0), Downsample("scale", scale=1.0)],
                         ids=["budget-1", "scale-1"])
def test_full_size_is_the_base_model(tiny, reducer):
    images = noise_images([(60, 100), (96, 96), (40, 800)], seed=1)
    for image in images:
        assert torch.equal(llm_logits(tiny, FullTokens(), image), llm_logits(tiny, reducer, image))
    assert greedy_ids(tiny, FullTokens(), images) == greedy_ids(tiny, reducer, images)


def test_base_only_encodes_one_crop_packed_as_a_single_crop_image(tiny):
    images = noise_images(IMAGE_SIZES, seed=2)
    runner = VisionLanguageRunner(tiny, Downsample("base_only"))
    records = runner.generate(images, [QUESTION] * len(images), [str(i) for i in range(len(images))], [2] * 6)
    for image, record in zip(images, records):
        assert record.crops == 1 and record.crop_patches == (36,)
        assert record.visual_tokens_kept == 36 and record.newline_tokens_kept == 1  # transformers' single crop
        assert record.visual_tokens == patch_token_count(tiny.model, (image.height, image.width))
        assert record.input_scale == 1.0
    # the base crop is the same pixels and the same features as the full model's base crop
    pixel_values, image_sizes = runner.process_images(images[:1])
    full = encode_images(tiny.model, pixel_values, image_sizes).images[0]
    alone = encode_images(tiny.model, pixel_values, image_sizes, crops=[1]).images[0]
    torch.testing.assert_close(alone.features[:36], full.features[:36], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("budget", [0.2, 0.4, 0.5, 0.6, 0.8])
def test_budget_picks_the_largest_size_within_the_budget(tiny, budget):
    reducer = Downsample("scale", budget=budget)
    images = noise_images(IMAGE_SIZES, seed=3)
    records = VisionLanguageRunner(tiny, reducer).generate(images, [QUESTION] * 6, [str(i) for i in range(6)], [2] * 6)
    for image, record in zip(images, records):
        size = (image.height, image.width)
        full = patch_token_count(tiny.model, size)
        target = tokens_for_budget(budget, full)
        chosen = reducer.input_size(tiny.model, size)
        long_side = max(size)
        candidates = [scaled_size(size, side / long_side) for side in range(long_side, min(long_side, 48) - 1, -1)]
        counts = [patch_token_count(tiny.model, c) for c in candidates]
        assert record.visual_tokens == full and record.visual_tokens_kept == patch_token_count(tiny.model, chosen)
        assert record.input_scale == max(chosen) / long_side
        within = [c for c, n in zip(candidates, counts) if n <= target]
        if within:
            assert chosen == within[0] and record.visual_tokens_kept <= target  # the largest within the budget
        else:  # below what AnyRes can go: the largest size with the fewest tokens
            assert chosen == candidates[counts.index(min(counts))]
        assert record.crops == len(record.crop_patches) and sum(record.crop_patches) == record.visual_tokens_kept


def test_a_fixed_scale_resizes_every_image(tiny):
    reducer = Downsample("scale", scale=0.5)
    image = noise_images([(96, 96)])[0]
    (record,) = VisionLanguageRunner(tiny, reducer).generate([image], [QUESTION], ["k"], [2])
    assert reducer.input_size(tiny.model, (96, 96)) == (48, 48) and record.input_scale == 0.5
    assert record.crops == 3 and record.visual_tokens == 180 and record.visual_tokens_kept == 72  # a 1x2 grid
    assert scaled_size((3, 101), 0.01) == (2, 2)  # at least 2 px a side


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "half"}, "downsample's mode must be one of"),
    ({"mode": "base_only", "scale": 0.5}, "base_only takes neither scale nor budget"),
    ({"mode": "base_only", "budget": 0.5}, "base_only takes neither scale nor budget"),
    ({"mode": "scale"}, "needs exactly one of scale=S"),
    ({"mode": "scale", "scale": 0.5, "budget": 0.5}, "needs exactly one of scale=S"),
    ({"mode": "scale", "scale": 0}, r"scale must be in \(0, 1\], got 0"),
    ({"mode": "scale", "scale": 2}, r"scale must be in \(0, 1\], got 2"),
    ({"mode": "scale", "budget": 1.5}, r"budget must be in \(0, 1\], got 1.5"),
])
def test_bad_settings_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Downsample(**kwargs)


def test_plugin_rejects_bad_arguments_before_loading(tmp_path):
    from lmms_plugins.models import DownsampleLlava

    missing = str(tmp_path / "missing")  # would fail to load: the argument check comes first
    with pytest.raises(ValueError, match="downsample needs a mode"):
        DownsampleLlava(pretrained=missing)
    with pytest.raises(ValueError, match="needs exactly one of scale=S"):
        DownsampleLlava(pretrained=missing, mode="scale")


def test_encode_images_refuses_other_crop_counts(tiny):
    processed = tiny.image_processor(noise_images([(96, 96)]), return_tensors="pt")
    with pytest.raises(ValueError, match=r"crops must give, per image, 1 \(the base image\) or all of its \[5\] crops"):
        encode_images(tiny.model, processed["pixel_values"], processed["image_sizes"], crops=[2])


PREFILL_TERMS = ("flops_vision", "flops_projector", "flops_selection", "flops_llm_prefill", "fastv_macs")


@pytest.mark.parametrize("args", [{"mode": "base_only"}, {"mode": "scale", "budget": 0.5}])
def test_latency_path_counts_what_the_evaluation_counts(tiny_checkpoint, args):
    """The plugin built as measure_latency builds it (get_model(method)(**model_args)): the latency code path
    (prepare, run_sample) encodes the same crops and charges the same prefill as the evaluation record."""
    from lmms_eval.models import get_model

    from visor_model.efficiency.accounting import SampleTokens
    from visor_model.efficiency.latency import Clock, prepare, run_sample

    plugin = get_model("downsample")(pretrained=str(tiny_checkpoint), device="cpu", **args)
    assert plugin.label == "downsample"
    image = noise_images([(96, 96)], seed=4)[0]
    _, tokens = run_sample(plugin.runner, prepare(plugin.runner, image, QUESTION, "k"), 2, Clock("cpu"))
    (record,) = plugin.runner.generate([image], [QUESTION], ["k"], [2])
    assert tokens.n_crops == record.crops < 5
    timed, evaluated = plugin.accountant.record(tokens), plugin.accountant.record(SampleTokens.from_record(record, 2))
    assert {k: timed[k] for k in PREFILL_TERMS} == {k: evaluated[k] for k in PREFILL_TERMS}
