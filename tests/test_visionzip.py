"""VisionZip (visor_model.methods.visionzip): invariants on tiny reference models, an independent recomputation of
its dominant and contextual tokens from the encoder's own (eager) attention, and the pure budget functions."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import ANYRES_IMAGE_SIZES, encode_noise, llm_logits, noise_images, tiny_config
from test_anyres_positions import DOWNSAMPLED, onevision  # noqa: F401 (onevision: a fixture)

from visor_model.llava.runner import VisionLanguageRunner, prompt_ids
from visor_model.llava.visual import encode_images, pack_crop_features, select_vision_features
from visor_model.methods.base import FullTokens, tokens_for_budget
from visor_model.methods.hired import encoder_layers
from visor_model.methods.visionzip import (
    DOMINANT_RATIO,
    VisionZip,
    crop_budgets,
    merge,
    merge_work,
    target_positions,
)
from visor_model.reference.models import build_reference_model

BUDGETS = (0.05, 0.1, 0.2, 0.4, 0.6, 1.0)
IMAGE_SIZES = ANYRES_IMAGE_SIZES
QUESTION = "what colour is the square"
encode = encode_noise


@torch.no_grad()
def greedy_ids(loaded, reducer, images, limit=6):
    runner = VisionLanguageRunner(loaded, reducer)
    pixel_values, image_sizes = runner.process_images(images)
    _, kept = runner.visual_tokens(pixel_values, image_sizes, [str(i) for i in range(len(images))])
    prompts = [prompt_ids(loaded.tokenizer, loaded.model.config.image_token_id, QUESTION)] * len(images)
    return runner.decode(runner.splice(prompts, kept), [limit] * len(images), [[]] * len(images)).token_ids


# --------------------------------------------------------------------------------------------------------
# invariants on the model
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(60, 100), (96, 96), (40, 800)])
def test_budget_one_is_the_base_model(tiny, size):
    """Budget 1.0: every remaining patch is a target, nothing merges: the same logits and greedy ids, bit for bit."""
    image = noise_images([size])[0]
    assert torch.equal(llm_logits(tiny, FullTokens(), image), llm_logits(tiny, VisionZip(budget=1.0), image))
    images = noise_images([size, (96, 96)], seed=1)
    assert greedy_ids(tiny, FullTokens(), images) == greedy_ids(tiny, VisionZip(budget=1.0), images)


def test_kept_counts_equal_the_budget(tiny):
    vision = encode(tiny, IMAGE_SIZES)
    assert len(set(vision.crop_owner.bincount().tolist())) > 1, "the batch must mix different numbers of crops"
    for budget in BUDGETS:
        for ratio in (DOMINANT_RATIO, 0.0, 0.5, 1.0):
            kept, allocations = VisionZip(budget, ratio).reduce_with_allocations(tiny.model, vision, ["k"] * 6)
            for image, tokens, allocation in zip(vision.images, kept, allocations):
                n_keep = tokens_for_budget(budget, image.num_patch_tokens)
                assert tokens.num_patch_tokens == n_keep == sum(allocation.dominant) + sum(allocation.contextual)
                assert int(tokens.is_newline.sum()) == int(image.is_newline.sum())  # every newline stays
                present = torch.bincount(image.partition[~image.is_newline], minlength=len(allocation.present))
                assert allocation.present == present.tolist()
                for p, d, c, m, dropped in zip(allocation.present, allocation.dominant, allocation.contextual,
                                               allocation.merged, allocation.dropped):
                    assert d + c + m + dropped == p and (dropped == 0 or c == 0)
                    assert d == min(d + c, int(ratio * (d + c) + 0.5))
                kept_per_crop = torch.bincount(tokens.partition[~tokens.is_newline], minlength=len(allocation.present))
                assert kept_per_crop.tolist() == [d + c for d, c in zip(allocation.dominant, allocation.contextual)]


def test_kept_tokens_stay_in_order_and_unmerged_tokens_unchanged(tiny):
    vision = encode(tiny, [(60, 100)])
    (kept,), (allocation,) = VisionZip(0.3, 0.5).reduce_with_allocations(tiny.model, vision, ["k"])
    assert sum(allocation.merged) > 0
    image = vision.images[0]
    keys = list(zip(image.partition.tolist(), image.patch_index.tolist()))
    positions, start = [], 0
    for key in zip(kept.partition.tolist(), kept.patch_index.tolist()):
        start = keys.index(key, start)  # raises if a kept token does not come after the previous one
        positions.append(start)
        start += 1
    same = (image.features[torch.tensor(positions)] == kept.features).all(dim=1)
    # the contextual tokens of crops that merged are new vectors; every other token is the packed token itself
    assert int((~same).sum()) == sum(c for c, m in zip(allocation.contextual, allocation.merged) if m)


@torch.no_grad()
def test_tokens_match_a_recomputation_from_the_encoders_eager_attention(tiny):
    """The base crop of a 2x2 image (36 patches, raster order, no un-padding) recomputed from scratch: dominant =
    top-d of the feature layer's eager attention (CLS row, or the mean over patch queries on SigLIP), summed over
    heads; targets every R // C-th remaining patch; each other patch merged into the target of the most similar
    head-averaged key (cosine); contextual token = projector(target + mean of its patches' encoder outputs)."""
    model = copy.deepcopy(tiny.model)
    model.model.vision_tower.set_attn_implementation("eager")
    processed = tiny.image_processor(noise_images([(96, 96)], seed=2), return_tensors="pt")
    vision = encode_images(model, processed["pixel_values"], processed["image_sizes"], return_hidden_states=True)
    budget, ratio = 0.4, 0.5
    (kept,), (allocation,) = VisionZip(budget, ratio).reduce_with_allocations(model, vision, ["k"])

    has_cls = tiny.family == "llava_next"
    first = int(has_cls)
    crops = processed["pixel_values"][0]
    out = model.model.vision_tower(crops, output_hidden_states=True, output_attentions=True)
    layer_index = 1 if has_cls else 2  # vision_feature_layer -2 / -1 of 3 layers
    attention = out.attentions[layer_index][0]  # [H, seq, seq] of the base crop
    score = attention[:, 0, 1:].sum(0) if has_cls else attention[:, :, :].mean(1).sum(0)
    layer = encoder_layers(model)[layer_index]
    heads = layer.self_attn.num_heads
    k = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[layer_index][0]))  # [seq, d_v]
    keys = k.view(k.shape[0], heads, -1).mean(1)[first:]  # [P, d_h]
    keys = keys / keys.norm(dim=-1, keepdim=True)
    encoder_out = select_vision_features(model, out.hidden_states)[0]  # [P, d_v]

    d, c = allocation.dominant[0], allocation.contextual[0]
    dominant = torch.argsort(-score, stable=True)[:d]
    rest = torch.tensor([i for i in range(36) if i not in set(dominant.tolist())])
    step = len(rest) // c
    targets = rest[torch.arange(0, len(rest), step)[:c]]
    others = torch.tensor([i for i in rest.tolist() if i not in set(targets.tolist())])
    assign = (keys[others] @ keys[targets].T).argmax(1)
    contextual = torch.stack([encoder_out[t] + encoder_out[others[assign == j]].mean(0) if (assign == j).any()
                              else encoder_out[t] for j, t in enumerate(targets.tolist())])
    expected = model.model.multi_modal_projector(contextual)

    base = kept.partition == 0
    assert sorted(kept.patch_index[base].tolist()) == sorted(dominant.tolist() + targets.tolist())
    features = dict(zip(kept.patch_index[base].tolist(), kept.features[base]))
    for patch in dominant.tolist():
        assert torch.equal(features[patch], vision.images[0].features[patch])  # base crop: packed index = patch
    torch.testing.assert_close(torch.stack([features[t] for t in targets.tolist()]), expected, rtol=1e-4, atol=1e-5)


def test_substitute_score_on_siglip_and_cls_refused(tokenizer):
    model, _ = build_reference_model(tiny_config("llava_onevision"), tokenizer, seed=0)
    assert VisionZip(0.2, model=model).settings() == {
        "method": "visionzip", "budget": 0.2, "dominant_ratio": DOMINANT_RATIO, "score": "mean_received",
        "merge": "official"}
    with pytest.raises(ValueError, match="score='cls' needs an encoder with a CLS token"):
        VisionZip(0.2, score="cls", model=model)
    clip, _ = build_reference_model(tiny_config("llava_next"), tokenizer, seed=0)
    assert VisionZip(0.2, model=clip).settings()["score"] == "cls"
    assert VisionZip(0.2, score="mean_received", model=clip).settings()["score"] == "mean_received"


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": 0}, r"budget must be in \(0, 1\], got 0"),
    ({"budget": 1.5}, r"budget must be in \(0, 1\], got 1.5"),
    ({"budget": "lots"}, "budget must be a number"),
    ({"dominant_ratio": 1.2}, r"dominant_ratio must be in \[0, 1\], got 1.2"),
    ({"dominant_ratio": "most"}, "dominant_ratio must be a number"),
    ({"score": "max"}, "score must be one of"),
    ({"merge": "sum"}, r"merge must be one of \('official', 'mean'\), got 'sum'"),
])
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionZip(**{"budget": 0.2, **kwargs})


def test_lmms_plugin_arguments(tokenizer):
    from lmms_plugins.models import VisionZipLlava

    model, _ = build_reference_model(tiny_config("llava_next"), tokenizer, seed=0)
    plugin = object.__new__(VisionZipLlava)  # skip checkpoint loading; build_reducer only needs the model
    plugin.checkpoint = SimpleNamespace(model=model)
    assert plugin.build_reducer(budget=0.25, score="auto").settings() == {
        "method": "visionzip", "budget": 0.25, "dominant_ratio": DOMINANT_RATIO, "score": "cls", "merge": "official"}
    assert plugin.build_reducer(budget="0.5", dominant_ratio="0.75").settings()["dominant_ratio"] == 0.75
    with pytest.raises(ValueError, match="budget must be a number"):
        plugin.build_reducer()


# --------------------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------------------


def test_official_settings_split():
    """One 576-patch crop at 64 / 128 / 192 tokens: the official 54 + 10, 108 + 20, 162 + 30."""
    for tokens, split in ((64, (54, 10)), (128, (108, 20)), (192, (162, 30))):
        assert crop_budgets([576], tokens / 576, DOMINANT_RATIO) == [split]


@pytest.mark.parametrize("present", [[36, 36, 36, 36, 36], [36, 24, 24, 0, 0], [36, 0, 0, 0], [7], [0, 0], [36, 5]])
@pytest.mark.parametrize("budget", BUDGETS)
def test_crop_budgets_are_exact_and_proportional(present, budget):
    budgets = crop_budgets(present, budget, DOMINANT_RATIO)
    total = sum(present)
    n_keep = tokens_for_budget(budget, total) if total else 0
    shares = [d + c for d, c in budgets]
    assert sum(shares) == n_keep
    for p, share in zip(present, shares):
        assert share <= p and abs(share - n_keep * p / total if total else share) < 1  # largest remainders
    pairs, projected = merge_work(present, budget, DOMINANT_RATIO)
    assert pairs == sum((p - d - c) * c for p, (d, c) in zip(present, budgets))
    assert projected == sum(c for p, (d, c) in zip(present, budgets) if p - d - c and c)
    if budget == 1.0:
        assert (pairs, projected) == (0, 0)


def test_merge_rules_on_known_vectors():
    """Tokens 0 and 3 are the targets; 1 is nearest 0, 2 and 4 nearest 3 (keys = their directions)."""
    encoder_out = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0], [0.0, 1.0], [0.0, 3.0]])
    keys = torch.nn.functional.normalize(encoder_out, dim=-1)
    patch, targets, others = torch.arange(5), torch.tensor([0, 3]), torch.tensor([1, 2, 4])
    official = merge(encoder_out, keys, patch, targets, others)
    assert torch.equal(official, torch.tensor([[1.0 + 3.0, 0.0], [0.0, 1.0 + (5.0 + 3.0) / 2]]))  # target + mean
    mean = merge(encoder_out, keys, patch, targets, others, "mean")
    assert torch.equal(mean, torch.tensor([[(1.0 + 3.0) / 2, 0.0], [0.0, (1.0 + 5.0 + 3.0) / 3]]))
    alone = merge(encoder_out, keys, patch, torch.tensor([0, 3]), torch.tensor([1]))  # target 3 gets nothing
    assert torch.equal(alone[1], encoder_out[3])


def test_targets_are_spread_like_the_official_code():
    assert target_positions(10, 3).tolist() == [0, 3, 6]
    assert target_positions(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert target_positions(7, 2).tolist() == [0, 3]
    assert math.isclose(DOMINANT_RATIO, 0.84375)


@torch.no_grad()
def test_onevision_interpolated_canvas_merges_its_interpolated_encoder_outputs(onevision):  # noqa: F811
    """LLaVA-OneVision's anyres_max_9 (its real geometry, tests/test_anyres_positions.py) interpolates a large
    un-padded canvas: `pack_crop_features` packs any per-patch crop features as the projector outputs were
    packed (projected crop features come out as the packed tokens themselves), and the budget stays exact."""
    model, processor = onevision
    processed = processor(noise_images([DOWNSAMPLED[0]]), return_tensors="pt")
    vision = encode_images(model, processed["pixel_values"], processed["image_sizes"], return_hidden_states=True)
    image = vision.images[0]
    projected = model.model.multi_modal_projector(select_vision_features(model, vision.hidden_states))
    (packed,) = pack_crop_features(model, vision, projected)
    assert torch.equal(packed[~image.is_newline], image.features[~image.is_newline])
    assert bool((packed[image.is_newline] == 0).all())
    for budget in (0.05, 0.2):
        (kept,), (allocation,) = VisionZip(budget, 0.5).reduce_with_allocations(model, vision, ["k"])
        assert kept.num_patch_tokens == tokens_for_budget(budget, image.num_patch_tokens)
        assert sum(allocation.merged) > 0


PREFILL_TERMS = ("flops_vision", "flops_projector", "flops_selection", "flops_llm_prefill", "fastv_macs")


def test_latency_path_counts_what_the_evaluation_counts(tiny_checkpoint):
    """The plugin built as measure_latency builds it (get_model(method)(**model_args)); the latency code path
    (prepare, run_sample) charges the sample's prefill exactly as its evaluation record does."""
    from lmms_eval.models import get_model

    from visor_model.efficiency.accounting import SampleTokens
    from visor_model.efficiency.latency import Clock, prepare, run_sample

    plugin = get_model("visionzip")(pretrained=str(tiny_checkpoint), device="cpu", budget=0.3)
    assert plugin.label == "visionzip"
    image = noise_images([(60, 100)], seed=4)[0]
    _, tokens = run_sample(plugin.runner, prepare(plugin.runner, image, QUESTION, "k"), 2, Clock("cpu"))
    (record,) = plugin.runner.generate([image], [QUESTION], ["k"], [2])
    timed, evaluated = plugin.accountant.record(tokens), plugin.accountant.record(SampleTokens.from_record(record, 2))
    assert {k: timed[k] for k in PREFILL_TERMS} == {k: evaluated[k] for k in PREFILL_TERMS}
    assert timed["flops_selection"] > 0


def test_plugin_rejects_bad_arguments_before_loading(tmp_path):
    from lmms_plugins.models import VisionZipLlava

    missing = str(tmp_path / "missing")  # would fail to load: the argument check comes first
    with pytest.raises(ValueError, match="visionzip needs a budget"):
        VisionZipLlava(pretrained=missing)
    with pytest.raises(ValueError, match=r"dominant_ratio must be in \[0, 1\], got 2"):
        VisionZipLlava(pretrained=missing, budget=0.2, dominant_ratio=2)
