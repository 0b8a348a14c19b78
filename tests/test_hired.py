"""HiRED (visor_model.methods.hired): invariants on tiny reference models and the pure allocation/mapping functions."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import llm_logits, noise_images, tiny_config

from visor_model.llava.visual import encode_images
from visor_model.methods.base import FullTokens, tokens_for_budget
from visor_model.methods.hired import (
    HiRED,
    allocate_budget,
    attention_scores,
    encoder_layers,
    paper_partition_budgets,
    raster_chunk_regions,
    reference_partition_budgets,
    spatial_regions,
    top_k_mask,
)
from visor_model.reference.models import ReferenceConfig, build_reference_model

BUDGETS = (0.05, 0.1, 0.2, 0.4, 0.6, 1.0)
# (height, width): 2x2, 2x2 un-padded, 1x2, 2x1, tiny, very wide (sub-images fully un-padded away)
IMAGE_SIZES = ((96, 96), (60, 100), (48, 100), (150, 40), (10, 10), (40, 800))


@pytest.fixture(scope="module")
def next_model(tokenizer):
    model, processor = build_reference_model(tiny_config("llava_next"), tokenizer, seed=0)
    return SimpleNamespace(model=model.eval(), image_processor=processor, tokenizer=tokenizer)


@torch.no_grad()
def encode(loaded, sizes, seed=0):
    processed = loaded.image_processor(noise_images(sizes, seed), return_tensors="pt")
    return encode_images(loaded.model, processed["pixel_values"], processed["image_sizes"], return_hidden_states=True)


# --------------------------------------------------------------------------------------------------------
# invariants on the model
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(60, 100), (96, 96)])
def test_budget_one_paper_mode_is_the_base_model(tiny, size):
    image = noise_images([size])[0]
    full = llm_logits(tiny, FullTokens(), image)
    hired = llm_logits(tiny, HiRED(budget=1.0, mode="paper"), image)
    assert torch.equal(full, hired)


def test_attention_scores_match_the_encoders_own_attention(tiny):
    """The q/k recomputation equals the attention probabilities of an eager forward (output_attentions)."""
    model = copy.deepcopy(tiny.model)
    tower = model.model.vision_tower
    tower.set_attn_implementation("eager")
    crops = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        out = tower(crops, output_hidden_states=True, output_attentions=True)
    has_cls = tiny.family == "llava_next"
    for layer, attentions in enumerate(out.attentions):  # [crops, heads, seq, seq]
        ours = attention_scores(encoder_layers(model)[layer], out.hidden_states[layer], "mean_received", has_cls)
        first = int(has_cls)
        expected = attentions[:, :, first:, first:].mean(dim=2).sum(dim=1)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
        if has_cls:
            ours = attention_scores(encoder_layers(model)[layer], out.hidden_states[layer], "cls", has_cls)
            torch.testing.assert_close(ours, attentions[:, :, 0, 1:].sum(dim=1), rtol=1e-5, atol=1e-6)


def test_kept_tokens_exact_in_paper_mode_and_bounded_in_reference_mode(tiny):
    vision = encode(tiny, IMAGE_SIZES)
    crops = vision.crop_owner.bincount().tolist()
    assert len(set(crops)) > 1, "the batch must mix samples with different numbers of partitions"
    patches = [image.num_patch_tokens for image in vision.images]
    for budget in BUDGETS:
        paper, allocations = HiRED(budget=budget, mode="paper").reduce_with_allocations(tiny.model, vision, ["k"] * 6)
        for image, kept, allocation, n in zip(vision.images, paper, allocations, patches):
            assert kept.num_patch_tokens == tokens_for_budget(budget, n) == sum(allocation.partition_budgets)
            assert allocation.kept == allocation.partition_budgets
            assert int(kept.is_newline.sum()) == int(image.is_newline.sum())  # paper default: every newline stays
        reference, allocations = HiRED(budget=budget, mode="reference_code").reduce_with_allocations(
            tiny.model, vision, ["k"] * 6)
        for kept, allocation, n_crops, n in zip(reference, allocations, crops, patches):
            assert kept.num_patch_tokens <= allocation.budget
            if budget < 1.0:
                assert allocation.budget <= int(budget * n_crops * 36)  # the official budget: padded crops x P
            assert int(kept.is_newline.sum()) == 0


def test_kept_tokens_keep_their_order(next_model):
    vision = encode(next_model, [(60, 100)])
    (kept,) = HiRED(budget=0.3).reduce(next_model.model, vision, ["k"])
    image = vision.images[0]
    keys = list(zip(image.partition.tolist(), image.patch_index.tolist()))
    positions, start = [], 0
    for key in zip(kept.partition.tolist(), kept.patch_index.tolist()):
        start = keys.index(key, start)  # raises if a kept token does not come after the previous one
        positions.append(start)
        start += 1
    assert torch.equal(image.features[torch.tensor(positions)], kept.features)


def test_alpha_one_keeps_only_full_image_tokens(next_model):
    vision = encode(next_model, [(96, 96), (60, 100)])
    # 5 crops x 36 patches; budget 0.1 keeps <= 18 tokens, which the full image (36 patches) can hold
    for mode in ("paper", "reference_code"):
        kept = HiRED(budget=0.1, alpha=1.0, mode=mode).reduce(next_model.model, vision, ["a", "b"])
        for tokens in kept:
            patches = tokens.partition[~tokens.is_newline]
            assert patches.numel() > 0 and bool((patches == 0).all())
    # paper mode: newline tokens are structure; default keeps them all, "occupied_rows" drops empty rows
    kept = HiRED(budget=0.1, alpha=1.0).reduce(next_model.model, vision, ["a", "b"])
    assert [int(t.is_newline.sum()) for t in kept] == [int(i.is_newline.sum()) for i in vision.images]
    kept = HiRED(budget=0.1, alpha=1.0, newlines="occupied_rows").reduce(next_model.model, vision, ["a", "b"])
    assert [int(t.is_newline.sum()) for t in kept] == [0, 0]
    # a budget larger than the full image: paper mode stays exact, the overflow goes to the sub-images
    kept, allocations = HiRED(budget=0.6, alpha=1.0).reduce_with_allocations(next_model.model, vision, ["a", "b"])
    again = HiRED(budget=0.6, alpha=1.0).reduce(next_model.model, vision, ["a", "b"])  # the same tokens
    assert all(torch.equal(x.features, y.features) and torch.equal(x.patch_index, y.patch_index)
               for x, y in zip(kept, again))
    for tokens, image, allocation in zip(kept, vision.images, allocations):
        assert tokens.num_patch_tokens == tokens_for_budget(0.6, image.num_patch_tokens)
        assert allocation.partition_budgets[0] == 36


def test_occupied_rows_keeps_newlines_of_rows_with_kept_tokens(next_model):
    vision = encode(next_model, [(96, 96)])
    (kept,) = HiRED(budget=0.2, newlines="occupied_rows").reduce(next_model.model, vision, ["k"])
    image = vision.images[0]
    assert 0 < int(kept.is_newline.sum()) <= int(image.is_newline.sum())
    # every kept newline is preceded (since the previous kept newline) by at least one kept sub-image patch
    previous_was_patch = False
    for partition in kept.partition.tolist():
        if partition == -1:
            assert previous_was_patch
            previous_was_patch = False
        elif partition >= 1:
            previous_was_patch = True


def test_ties_break_to_the_lowest_patch_index(next_model):
    """All-equal scores (q_proj zeroed -> uniform attention): every partition keeps its lowest patch indices."""
    model = copy.deepcopy(next_model.model)
    for layer in encoder_layers(model):
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
        torch.nn.init.zeros_(layer.self_attn.q_proj.bias)
    vision = encode(SimpleNamespace(model=model, image_processor=next_model.image_processor), [(60, 100), (96, 96)])
    for mode in ("paper", "reference_code"):
        first = HiRED(budget=0.3, mode=mode).reduce(model, vision, ["a", "b"])
        second = HiRED(budget=0.3, mode=mode).reduce(model, vision, ["a", "b"])
        for a, b, image in zip(first, second, vision.images):
            assert torch.equal(a.partition, b.partition) and torch.equal(a.patch_index, b.patch_index)
            for k in range(int(image.partition.max()) + 1):
                present = image.patch_index[image.partition == k].sort().values
                kept = a.patch_index[a.partition == k].sort().values
                if mode == "paper":  # lowest present indices
                    assert torch.equal(kept, present[: kept.numel()])
                else:  # lowest indices of the whole crop, minus those un-padding removed
                    assert bool(torch.isin(kept, torch.arange(36)).all())
                    assert kept.numel() == 0 or int(kept.max()) < 36
    assert torch.equal(top_k_mask(torch.ones(8), 3), torch.tensor([True] * 3 + [False] * 5))
    tie_break = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])
    assert torch.equal(top_k_mask(torch.ones(8), 2, tie_break), torch.tensor([False] * 6 + [True] * 2))


def test_substitute_score_on_siglip_and_cls_refused(tokenizer):
    model, processor = build_reference_model(tiny_config("llava_onevision"), tokenizer, seed=0)
    model.eval()
    hired = HiRED(budget=0.2, model=model)
    assert hired.settings()["score"] == "mean_received"
    assert hired.settings()["selection_layer"] == 2  # vision_feature_layer -1: the last of 3 layers
    vision = encode(SimpleNamespace(model=model, image_processor=processor), [(60, 100)])
    (kept,) = hired.reduce(model, vision, ["k"])
    assert kept.num_patch_tokens == tokens_for_budget(0.2, vision.images[0].num_patch_tokens)
    with pytest.raises(ValueError, match="score='cls' needs an encoder with a CLS token"):
        HiRED(budget=0.2, score="cls", model=model)


def test_defaults_on_clip(next_model):
    settings = HiRED(budget=0.2, model=next_model.model).settings()
    assert settings == {
        "method": "hired", "budget": 0.2, "alpha": 0.5, "mode": "paper", "score": "cls",
        "distribution_layer": 0, "selection_layer": 1,  # vision_feature_layer -2 of 3 layers -> layer 1
        "newlines": "all",
    }
    assert HiRED(budget=0.2, mode="reference_code", model=next_model.model).settings()["newlines"] == "none"


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"budget": 0}, "budget"),
        ({"budget": 1.5}, "budget"),
        ({"budget": "lots"}, "budget"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": "half"}, "alpha"),
        ({"mode": "faithful"}, "mode"),
        ({"score": "max"}, "score"),
        ({"distribution_layer": -1}, "distribution_layer"),
        ({"distribution_layer": "first"}, "distribution_layer"),
        ({"selection_layer": 1.5}, "selection_layer"),
        ({"selection_layer": 7}, "selection_layer"),  # out of range for the 3-layer encoder (checked on bind)
        ({"newlines": "some"}, "newlines"),
    ],
)
def test_bad_settings_name_the_setting(next_model, kwargs, setting):
    arguments = {"budget": 0.2, **kwargs}
    with pytest.raises(ValueError, match=setting):
        HiRED(**arguments, model=next_model.model)


def test_alpha_message():
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        HiRED(budget=0.2, alpha=1.5)


def test_lmms_plugin_converts_string_arguments(next_model):
    from lmms_plugins.models import HiredLlava

    plugin = object.__new__(HiredLlava)  # skip checkpoint loading; build_reducer only needs the model
    plugin.checkpoint = SimpleNamespace(model=next_model.model)
    reducer = plugin.build_reducer(budget="0.25", alpha="0.75", mode="reference_code", score="None",
                                   distribution_layer="0", selection_layer=2.0, newlines="auto")
    assert reducer.settings() == {
        "method": "hired", "budget": 0.25, "alpha": 0.75, "mode": "reference_code", "score": "cls",
        "distribution_layer": 0, "selection_layer": 2, "newlines": "none",
    }
    with pytest.raises(ValueError, match="budget"):
        plugin.build_reducer()


# --------------------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------------------


def pinpoint_grids(crop=48):
    return [(h // crop, w // crop) for h, w in ReferenceConfig(family="llava_next").grid_pinpoints]


@pytest.mark.parametrize("grid", pinpoint_grids())
def test_attention_in_one_sub_image_gives_it_the_largest_budget(grid):
    rows, cols = grid
    side = 6
    regions = spatial_regions(side, grid)
    for target in range(rows * cols):
        r, c = divmod(target, cols)
        # independent geometry: full-image patch (i, j) covers sub-image (floor(y rows), floor(x cols)) of its centre
        scores = torch.full((side, side), 1e-3)
        for i in range(side):
            for j in range(side):
                if int((i + 0.5) / side * rows) == r and int((j + 0.5) / side * cols) == c:
                    scores[i, j] = 1.0
        scores = scores.reshape(-1)
        region_scores = torch.zeros(rows * cols, dtype=torch.float64).index_add_(0, regions, scores.double())
        capacity = torch.full((1 + rows * cols,), side * side)
        budgets = paper_partition_budgets(40, 0.5, region_scores, capacity)
        assert int(budgets.sum()) == 40 and int(budgets[0]) == 20
        sub = budgets[1:]
        assert int(sub.argmax()) == target and bool((sub[target] > sub[torch.arange(rows * cols) != target]).all())


def test_spatial_regions_are_quadrants_and_reference_regions_are_strips():
    side = 6
    quadrants = spatial_regions(side, (2, 2)).reshape(side, side)
    expected = torch.tensor([[0] * 3 + [1] * 3] * 3 + [[2] * 3 + [3] * 3] * 3)
    assert torch.equal(quadrants, expected)
    # the official code: the raster-ordered map cut into 4 contiguous chunks of 9 patches (1.5 rows each)
    strips = raster_chunk_regions(side, (2, 2))
    assert torch.equal(strips, torch.arange(36) // 9)
    # at LLaVA-NeXT scale (24 x 24, 2x2) the chunks are strips of 6 full rows
    big = raster_chunk_regions(24, (2, 2)).reshape(24, 24)
    for region in range(4):
        assert bool((big[6 * region : 6 * (region + 1)] == region).all())
    # so attention on the top 1.5 rows goes to sub-image 1 only in reference mode, but to 1 and 2 spatially
    distribution = torch.zeros(36)
    distribution[:9] = 1.0
    counts = torch.bincount(strips[top_k_mask(distribution, 9)], minlength=4)
    assert counts.tolist() == [9, 0, 0, 0]
    budgets = reference_partition_budgets(5, 36, 0.2, 0.5, counts)
    assert budgets.tolist() == [18, 18, 0, 0, 0]
    mass = torch.zeros(4, dtype=torch.float64).index_add_(0, spatial_regions(side, (2, 2)), distribution.double())
    assert mass.tolist() == [6.0, 3.0, 0.0, 0.0]  # row 0 splits 3 / 3, row 1 (first half) is top-left
    # single-column grids are the case the official mapping gets right
    assert torch.equal(raster_chunk_regions(side, (2, 1)), spatial_regions(side, (2, 1)))
    assert torch.equal(raster_chunk_regions(side, (3, 1)), spatial_regions(side, (3, 1)))


def test_spatial_regions_follow_the_unpadded_content():
    # 2x2 canvas of 12 x 12 patches; the image fills only columns [0, 8): the column boundary (x = 6) lies at
    # 3/4 of the image's width, so the full image's 5th and 6th patch columns cover the right sub-images
    regions = spatial_regions(6, (2, 2), content=(0.0, 12.0, 0.0, 8.0)).reshape(6, 6)
    assert regions[0].tolist() == [0, 0, 0, 0, 1, 1] and regions[5].tolist() == [2, 2, 2, 2, 3, 3]


def test_allocate_budget_is_exact_capped_and_deterministic():
    weights = torch.tensor([5.0, 1.0, 1.0, 0.0])
    capacity = torch.tensor([3, 10, 10, 10])
    alloc = allocate_budget(12, weights, capacity)
    assert alloc.tolist()[0] == 3 and int(alloc.sum()) == 12 and bool((alloc <= capacity).all())
    assert alloc.tolist() == [3, 5, 4, 0]  # 9 split 4.5 / 4.5 -> the tie goes to the lower index
    assert allocate_budget(100, weights, capacity).tolist() == capacity.tolist()  # more than fits: all
    assert allocate_budget(4, torch.zeros(3), torch.tensor([2, 6, 0])).tolist() == [1, 3, 0]  # no signal
    assert allocate_budget(0, weights, capacity).tolist() == [0, 0, 0, 0]
    # the full image cannot hold its share: the rest goes to the sub-images, and the other way round
    # (14 split 3.5 / 10.5: the leftover's remainder tie goes to the larger weight)
    scores = torch.tensor([1.0, 3.0])
    assert paper_partition_budgets(50, 1.0, scores, torch.tensor([36, 20, 20])).tolist() == [36, 3, 11]
    assert paper_partition_budgets(50, 0.0, scores, torch.tensor([36, 10, 10])).tolist() == [30, 10, 10]


def test_reference_budgets_are_upper_bounds_with_floors_and_clamps():
    # 5 crops x 36 x 0.3 = 54 -> full 27, sub-images share 27 by counts 1:1:1:0 -> 9 each, nothing redistributed
    assert reference_partition_budgets(5, 36, 0.3, 0.5, torch.tensor([1, 1, 1, 0])).tolist() == [27, 9, 9, 9, 0]
    # floors are lost: 27 / 4 = 6.75 -> 6 each (24 of 27)
    assert reference_partition_budgets(5, 36, 0.3, 0.5, torch.tensor([2, 2, 2, 2])).tolist() == [27, 6, 6, 6, 6]
    # clamps are lost: one region with every count would get 108 > 36 -> 36
    assert reference_partition_budgets(5, 36, 0.9, 0.2, torch.tensor([5, 0, 0, 0])).tolist() == [32, 36, 0, 0, 0]
    # no counted patch (alpha = 1): the official code divides 0 by 0; here the sub-images get nothing
    assert reference_partition_budgets(5, 36, 0.6, 1.0, torch.tensor([0, 0, 0, 0])).tolist() == [36, 0, 0, 0, 0]
