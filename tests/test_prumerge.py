"""PruMerge / PruMerge+ (visor_model.methods.prumerge): its pure rules on constructed inputs (IQR outliers, the
spatial samples, the merge), its budgets and invariants on tiny reference models, the official attention
recomputed from the encoder's own q/k projections, and a run through the runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ANYRES_IMAGE_SIZES, encode_noise, llm_logits, noise_images, tiny_config

from visor_model.llava.runner import VisionLanguageRunner
from visor_model.llava.visual import encode_images
from visor_model.methods.base import FullTokens, tokens_for_budget
from visor_model.methods.hired import encoder_layers
from visor_model.methods.prumerge import (
    SUMMARY,
    PruMerge,
    budget_split,
    crop_quotas,
    iqr_outliers,
    merge_tokens,
    merge_work,
    official_samples,
    select_crop,
    uniform_samples,
)
from visor_model.reference.models import build_reference_model

BUDGETS = (0.05, 0.1, 0.25, 0.5, 0.9, 1.0)
IMAGE_SIZES = ANYRES_IMAGE_SIZES
QUESTION = "what colour is the square"
encode = encode_noise


# --------------------------------------------------------------------------------------------------------
# pure rules on constructed inputs
# --------------------------------------------------------------------------------------------------------


def test_iqr_selection_picks_the_outliers_of_a_constructed_score_vector():
    """Quartiles as numpy's percentile (linear interpolation); strictly above Q3 + 1.5 IQR, as the official code."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(1.0, 2.0, 64)
    scores[[3, 17, 40]] = [9.0, 5.0, 30.0]  # far above the fence
    q1, q3 = np.percentile(scores, 25), np.percentile(scores, 75)
    fence = q3 + 1.5 * (q3 - q1)
    scores[50] = fence  # on the fence: not an outlier
    assert torch.nonzero(iqr_outliers(torch.tensor(scores))).squeeze(1).tolist() == [3, 17, 40]
    assert not iqr_outliers(torch.ones(10)).any()  # no spread, no outlier
    # the adaptive selection keeps exactly them (PruMerge), or the top score when there is none
    outliers, samples = select_crop(torch.tensor(scores), "prumerge", None)
    assert torch.nonzero(outliers).squeeze(1).tolist() == [3, 17, 40] and not samples.any()
    outliers, _ = select_crop(torch.arange(8.0), "prumerge", None)
    assert torch.nonzero(outliers).squeeze(1).tolist() == [7]


def test_prumerge_plus_samples_are_uniform_on_a_grid():
    """The official stride with 32 outliers of 576: s = (576 // 32) // 3 = 6, columns 0, 6, 12, 18 of every row
    of the 24 x 24 crop (index 575 excluded, as the official arange(0, 575, s)); budget-mode samples every
    (n / m)-th."""
    samples = official_samples(576, 32)
    rows, cols = samples // 24, samples % 24
    assert samples.numel() == 96 and set(cols.tolist()) == {0, 6, 12, 18}
    assert torch.equal(torch.bincount(rows, minlength=24), torch.full((24,), 4))
    assert official_samples(576, 144).tolist() == list(range(0, 575, 1))  # stride at least 1
    assert official_samples(10, 0).tolist() == [0, 3, 6]  # no outlier counts as one
    assert uniform_samples(36, 12).tolist() == list(range(0, 36, 3))  # 6 x 6 crop: columns 0 and 3 of every row
    assert uniform_samples(10, 4).tolist() == [0, 2, 5, 7]
    assert uniform_samples(5, 9).tolist() == [0, 1, 2, 3, 4] and uniform_samples(5, 0).numel() == 0


def test_budget_selection_fills_and_caps():
    """Quota q: q - 1 selected (the extra token is the q-th): outliers by score first, then samples or scores."""
    scores = torch.ones(36)
    scores[[5, 20]] = torch.tensor([50.0, 40.0])
    outliers, samples = select_crop(scores, "plus", 14)  # 2 outliers + 11 samples spread over the other 34
    assert torch.nonzero(outliers).squeeze(1).tolist() == [5, 20]
    rest = [i for i in range(36) if i not in (5, 20)]
    assert torch.nonzero(samples).squeeze(1).tolist() == [rest[i * 34 // 11] for i in range(11)]
    outliers, samples = select_crop(scores, "plus", 2)  # capped: the top outlier only
    assert torch.nonzero(outliers).squeeze(1).tolist() == [5] and not samples.any()
    outliers, samples = select_crop(scores, "prumerge", 5)  # PruMerge's filler: the next scores (ties: lower)
    assert torch.nonzero(samples).squeeze(1).tolist() == [0, 1]
    ramp = torch.linspace(0.0, 1.0, 36)  # no outlier: the top score counts as one
    outliers, samples = select_crop(ramp, "prumerge", 4)
    assert torch.nonzero(outliers).squeeze(1).tolist() == [35]
    assert torch.nonzero(samples).squeeze(1).tolist() == [33, 34]
    outliers, samples = select_crop(scores, "plus", 36)
    assert outliers.all() and not samples.any()  # the whole crop: nothing to merge


def test_merge_is_the_documented_attention_weighted_sum_and_mean():
    """Tokens 0 and 3 kept; keys: token 1 and 2 closest to 0, token 4 closest to 3 (2 neighbours each; a kept
    token's neighbours may be kept ones, as in the official code)."""
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [0.0, 1.0], [0.0, 4.0]])
    keys = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.3], [0.0, 1.0],
                                                       [0.1, 1.0]]), dim=-1)
    a = torch.tensor([0.4, 0.1, 0.2, 0.2, 0.1])
    kept = torch.tensor([True, False, False, True, False])
    merged, extra = merge_tokens(x, keys, a, kept, neighbours=2)
    expected_0 = x[0] + 0.1 * x[1] + 0.2 * x[2]
    expected_3 = x[3] + 0.1 * x[4] + 0.2 * x[2]  # token 2 (key [1, 0.3]) is 3's second nearest
    torch.testing.assert_close(merged, torch.stack([expected_0, expected_3]))
    torch.testing.assert_close(extra, 0.1 * x[1] + 0.2 * x[2] + 0.1 * x[4])
    mean, mean_extra = merge_tokens(x, keys, a, kept, neighbours=2, rule="mean")
    torch.testing.assert_close(mean[0], (0.4 * x[0] + 0.1 * x[1] + 0.2 * x[2]) / 0.7)
    torch.testing.assert_close(mean[1], (0.2 * x[3] + 0.1 * x[4] + 0.2 * x[2]) / 0.5)
    torch.testing.assert_close(mean_extra, (0.1 * x[1] + 0.2 * x[2] + 0.1 * x[4]) / 0.4)
    everything, _ = merge_tokens(x, keys, a, kept, neighbours=32)  # capped at the n - 1 others
    torch.testing.assert_close(everything[0], x[0] + (a[1:, None] * x[1:]).sum(0))


def test_budget_split_and_merge_work():
    present = [36, 24, 24, 0, 0]
    for budget in BUDGETS:
        quotas = crop_quotas(present, budget)
        assert sum(quotas) == tokens_for_budget(budget, sum(present))
        selected, extra = budget_split(present, budget)
        assert [s + e for s, e in zip(selected, extra)] == quotas
        assert all(e == int(0 < q < p) for q, p, e in zip(quotas, present, extra))
    assert merge_work(present, *budget_split(present, 1.0)) == (0, 0, 0)
    # one crop of 36: 9 selected, 27 pruned: 9 x 35 comparisons, 9 x 32 + 27 weighted vectors, 10 re-projected
    assert merge_work([36], [9], [1]) == (9 * 35, 9 * 32 + 27, 10)
    assert merge_work([36, 5], [9, 2], [1, 1], neighbours=3) == (9 * 35 + 2 * 4, 9 * 3 + 27 + 2 * 3 + 3, 13)


# --------------------------------------------------------------------------------------------------------
# invariants on the model
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(60, 100), (96, 96), (40, 800)])
def test_budget_one_is_the_base_model(tiny, size):
    """Budget 1.0: every token kept, nothing merged: the base model's logits bit for bit."""
    image = noise_images([size])[0]
    for variant in ("plus", "prumerge"):
        reducer = PruMerge(budget=1.0, variant=variant)
        assert torch.equal(llm_logits(tiny, FullTokens(), image), llm_logits(tiny, reducer, image))


def test_kept_counts_equal_the_budget(tiny):
    vision = encode(tiny, IMAGE_SIZES)
    assert len(set(vision.crop_owner.bincount().tolist())) > 1, "the batch must mix different numbers of crops"
    for budget in BUDGETS:
        for variant in ("plus", "prumerge"):
            kept, allocations = PruMerge(budget=budget, variant=variant).reduce_with_allocations(
                tiny.model, vision, ["k"] * len(IMAGE_SIZES))
            for image, tokens, allocation in zip(vision.images, kept, allocations):
                n_keep = tokens_for_budget(budget, image.num_patch_tokens)
                assert tokens.num_patch_tokens == n_keep == sum(allocation.kept)
                assert allocation.kept == crop_quotas(allocation.present, budget)
                assert int(tokens.is_newline.sum()) == int(image.is_newline.sum())  # every newline stays
                kept_per_crop = torch.bincount(tokens.partition[~tokens.is_newline], minlength=len(allocation.present))
                assert kept_per_crop.tolist() == allocation.kept
                assert int((tokens.patch_index == SUMMARY).sum()) == sum(allocation.extra)


def test_adaptive_mode_keeps_outliers_samples_and_one_extra_token_per_crop(tiny):
    vision = encode(tiny, IMAGE_SIZES, seed=3)
    plus, plus_allocations = PruMerge(mode="adaptive").reduce_with_allocations(tiny.model, vision, ["k"] * 6)
    plain, plain_allocations = PruMerge(mode="adaptive", variant="prumerge").reduce_with_allocations(
        tiny.model, vision, ["k"] * 6)
    for image, tokens, allocation, plain_tokens, plain_allocation in zip(vision.images, plus, plus_allocations,
                                                                          plain, plain_allocations):
        assert tokens.num_patch_tokens == sum(allocation.kept) <= image.num_patch_tokens
        assert plain_tokens.num_patch_tokens == sum(plain_allocation.kept) < tokens.num_patch_tokens
        assert plain_allocation.outliers == allocation.outliers and not any(plain_allocation.samples)
        for p, o, s, e in zip(allocation.present, allocation.outliers, allocation.samples, allocation.extra):
            assert e == int(0 < p and o + s < p) and (p == 0 or o >= 1)
        assert int(tokens.is_newline.sum()) == int(image.is_newline.sum())


def test_kept_tokens_stay_in_order_with_the_extra_token_after_its_crop(tiny):
    vision = encode(tiny, [(60, 100)])
    (kept,), (allocation,) = PruMerge(budget=0.3).reduce_with_allocations(tiny.model, vision, ["k"])
    image = vision.images[0]
    keys = list(zip(image.partition.tolist(), image.patch_index.tolist()))
    extra = kept.patch_index == SUMMARY
    assert kept.partition[extra].tolist() == [j for j, e in enumerate(allocation.extra) if e]
    previous = -1  # packed position of the previous kept token (or the anchor of the previous extra token)
    for key in zip(kept.partition.tolist(), kept.patch_index.tolist()):
        if key[1] == SUMMARY:  # right after the last packed token of its crop
            anchor = max(i for i, (part, _) in enumerate(keys) if part == key[0])
            assert previous <= anchor
            previous = anchor
            continue
        previous = keys.index(key, previous + 1)  # raises unless it comes after the previous token in packed order
    assert sum(allocation.extra) > 0


@torch.no_grad()
def test_scores_are_the_official_full_width_attention(tiny):
    """The official code hooks q_proj / k_proj of the layer after the one feeding the projector (CLIP: layer 2 of
    3 here, as 23 of 24) and takes softmax(q k^T / sqrt(d)) over the full width; the same hooks here."""
    reducer = PruMerge(budget=0.2, model=tiny.model)
    config = reducer.resolved(tiny.model)
    assert config.layer == 2  # CLIP: feature layer 1 (-2 of 3) + 1; SigLIP: the last layer (-1), itself
    processed = tiny.image_processor(noise_images([(96, 96)], seed=2), return_tensors="pt")
    captured = {}
    attn = encoder_layers(tiny.model)[config.layer].self_attn
    handles = [attn.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)),
               attn.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o))]
    try:
        vision = encode_images(tiny.model, processed["pixel_values"], processed["image_sizes"],
                               return_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    q, k = captured["q"], captured["k"]  # [n_crops, seq, d]
    probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
    has_cls = tiny.family == "llava_next"
    expected = probs[:, 0, 1:] if has_cls else probs.mean(dim=1)
    scores, keys = PruMerge.scores_and_keys(tiny.model, vision, config)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(keys, torch.nn.functional.normalize(k[:, int(has_cls):], dim=-1), rtol=1e-4,
                               atol=1e-6)


@torch.no_grad()
def test_base_crop_matches_a_recomputation_from_hooked_projections(tiny):
    """The base crop of a 2x2 image (36 patches, raster order, no un-padding), budget mode, recomputed from the
    hooked q/k: quota q from the proportional split, the IQR outliers (at most q - 1) then every (R / m)-th other
    patch; each selected patch = projector(x_i + sum of a_j x_j over its 32 most similar keys), the extra token =
    projector(sum of a_j x_j over the pruned), placed after the crop's last token."""
    processed = tiny.image_processor(noise_images([(96, 96)], seed=7), return_tensors="pt")
    reducer = PruMerge(budget=0.3, model=tiny.model)
    config = reducer.resolved(tiny.model)
    captured = {}
    attn = encoder_layers(tiny.model)[config.layer].self_attn
    handles = [attn.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o[0])),
               attn.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o[0]))]
    try:
        vision = encode_images(tiny.model, processed["pixel_values"], processed["image_sizes"],
                               return_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    (kept,), (allocation,) = reducer.reduce_with_allocations(tiny.model, vision, ["k"])

    has_cls = tiny.family == "llava_next"
    first = int(has_cls)
    q, k = captured["q"], captured["k"]  # [seq, d] of the base crop (crop 0)
    probs = (q @ k.T * q.shape[-1] ** -0.5).softmax(dim=-1)
    a = (probs[0, 1:] if has_cls else probs.mean(0)).double()  # [36]
    keys = torch.nn.functional.normalize(k[first:], dim=-1)
    layer = tiny.model.config.vision_feature_layer
    x = vision.hidden_states[layer][0, first:]  # [36, d_v] what the projector reads
    quota = crop_quotas(allocation.present, 0.3)[0]
    q1, q3 = np.percentile(a.numpy(), 25), np.percentile(a.numpy(), 75)
    outliers = [int(i) for i in torch.argsort(-a, stable=True)
                if a[i] > q3 + 1.5 * (q3 - q1)][: quota - 1] or [int(a.argmax())]
    others = [i for i in range(36) if i not in outliers]
    fill = quota - 1 - len(outliers)
    selected = sorted(outliers + [others[i * len(others) // fill] for i in range(fill)])
    pruned = [i for i in range(36) if i not in selected]
    expected = []
    for i in selected:
        similarity = keys @ keys[i]
        similarity[i] = -float("inf")
        near = torch.argsort(-similarity, stable=True)[:32]
        expected.append(x[i] + (a[near, None].float() * x[near]).sum(0))
    expected.append((a[pruned, None].float() * x[pruned]).sum(0))
    expected = tiny.model.model.multi_modal_projector(torch.stack(expected))

    base = kept.partition == 0
    assert kept.patch_index[base].tolist() == selected + [SUMMARY]  # the extra token right after the crop
    assert allocation.kept[0] == quota
    torch.testing.assert_close(kept.features[base], expected, rtol=1e-4, atol=1e-5)


def test_substitute_score_on_siglip_and_cls_refused(tokenizer):
    model, _ = build_reference_model(tiny_config("llava_onevision"), tokenizer, seed=0)
    assert PruMerge(budget=0.2, model=model).settings() == {
        "method": "prumerge", "mode": "budget", "budget": 0.2, "variant": "plus", "score": "mean_received",
        "layer": 2, "neighbours": 32, "merge": "official"}
    with pytest.raises(ValueError, match="score='cls' needs an encoder with a CLS token"):
        PruMerge(budget=0.2, score="cls", model=model)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\] for this 3-layer encoder, got 3"):
        PruMerge(budget=0.2, layer=3, model=model)
    clip, _ = build_reference_model(tiny_config("llava_next"), tokenizer, seed=0)
    assert PruMerge(mode="adaptive", model=clip).settings()["score"] == "cls"


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": None}, "budget mode needs a budget"),
    ({"budget": 0}, r"budget must be in \(0, 1\], got 0"),
    ({"budget": 1.5}, r"budget must be in \(0, 1\], got 1.5"),
    ({"budget": "lots"}, "budget must be a number"),
    ({"mode": "adaptive"}, "adaptive mode keeps the IQR count and takes no budget, got budget=0.2"),
    ({"mode": "fixed"}, r"mode must be one of \('budget', 'adaptive'\), got 'fixed'"),
    ({"variant": "plusplus"}, "variant must be one of"),
    ({"score": "max"}, "score must be one of"),
    ({"layer": -1}, "layer must be >= 0, got -1"),
    ({"layer": 1.5}, "layer must be an integer, got 1.5"),
    ({"neighbours": 0}, "neighbours must be >= 1, got 0"),
    ({"neighbours": "many"}, "neighbours must be an integer"),
    ({"merge": "sum"}, r"merge must be one of \('official', 'mean'\), got 'sum'"),
])
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruMerge(**{"budget": 0.2, **kwargs})


@torch.no_grad()
def test_runs_end_to_end_through_the_runner(tiny):
    images = noise_images([(60, 100), (96, 96)], seed=5)
    for reducer in (PruMerge(budget=0.25), PruMerge(mode="adaptive", merge="mean")):
        runner = VisionLanguageRunner(tiny, reducer)
        records = runner.generate(images, [QUESTION] * 2, ["a", "b"], [3, 3])
        for record in records:
            assert 0 < record.visual_tokens_kept < record.visual_tokens
            assert record.generated_tokens <= 3 and isinstance(record.answer, str)
        if reducer.config.mode == "budget":
            assert [r.visual_tokens_kept for r in records] == [tokens_for_budget(0.25, r.visual_tokens)
                                                               for r in records]


def test_accountant_charges_scores_and_merge_computed_by_hand(tiny):
    from visor_model.efficiency.accounting import FlopAccountant, SampleTokens
    from visor_model.efficiency.shapes import LlavaShape

    vision = encode(tiny, [(60, 100)], seed=3)
    reducer = PruMerge(budget=0.25, neighbours=5)
    (kept,), (allocation,) = reducer.reduce_with_allocations(tiny.model, vision, ["a"])
    present = allocation.present
    tokens = SampleTokens(n_text=10, n_visual=kept.features.shape[0], n_crops=len(present), crop_patches=present)
    flops = FlopAccountant.for_model(tiny.model, reducer).sample(tokens)

    v = LlavaShape.from_config(tiny.model.config).vision
    d, seq = v.hidden, v.tokens_per_crop
    queries = 1 if reducer.resolved(tiny.model).score == "cls" else v.n_patches
    scores = len(present) * (2 * 2 * seq * d * d + 2 * queries * seq * d)  # q_proj, k_proj, the score rows
    pairs = summed = 0
    for p, o, s, e in zip(present, allocation.outliers, allocation.samples, allocation.extra):
        if e:  # the crop merged: its selected tokens' key cosines and weighted sums, its pruned ones' extra token
            pairs += (o + s) * (p - 1)
            summed += (o + s) * min(5, p - 1) + (p - o - s)
    assert pairs > 0
    assert flops.selection.total == scores + 2 * pairs * d + 2 * summed * d
    assert flops.selection["merge.similarity"] == 2 * pairs * d
    with pytest.raises(ValueError, match="adaptive PruMerge's merge FLOPs need each crop's selected-token count"):
        FlopAccountant.for_model(tiny.model, PruMerge(mode="adaptive")).sample(tokens)


def test_plugin_rejects_bad_arguments_before_loading(tmp_path):
    from lmms_plugins.models import PruMergeLlava

    missing = str(tmp_path / "missing")  # would fail to load: the argument check comes first
    with pytest.raises(ValueError, match="prumerge in budget mode needs a budget"):
        PruMergeLlava(pretrained=missing)
    with pytest.raises(ValueError, match="variant must be one of"):
        PruMergeLlava(pretrained=missing, budget=0.2, variant="minus")
    with pytest.raises(ValueError, match="adaptive mode keeps the IQR count and takes no budget"):
        PruMergeLlava(pretrained=missing, mode="adaptive", budget=0.2)
    with pytest.raises(ValueError, match="neighbours must be >= 1"):
        PruMergeLlava(pretrained=missing, budget=0.2, neighbours="0")
