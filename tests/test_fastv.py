"""FastV (visor_model.methods.fastv, lmms_plugins.fastv): invariants on tiny reference models of both families, its
FLOPs against FlopCounterMode, the plugin through lmms-eval's evaluator and the latency path, and its claim."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import fake_results
import pandas as pd
import pytest
import torch
from conftest import FAMILIES, noise_images, save_checkpoint, tiny_config
from test_accounting import counted, requests_for
from transformers.masking_utils import create_causal_mask

from visor_model.audit import analysis
from visor_model.audit.claims import Tables, audit, load_claims
from visor_model.audit.tables import latency_table
from visor_model.efficiency.accounting import FlopAccountant, SampleTokens, fastv_prefill_macs
from visor_model.efficiency.flops import fastv_layer_macs
from visor_model.efficiency.shapes import LLMShape
from visor_model.llava.generation import greedy_generate
from visor_model.llava.runner import VisionLanguageRunner, prompt_ids
from visor_model.methods.base import FullTokens
from visor_model.methods.fastv import FastV, FastVConfig, FastVRunner, rank_flops
from visor_model.reference.models import build_reference_model

CLAIMS = Path(__file__).resolve().parent.parent / "config" / "claims.yaml"
LAYERS = 4  # two layers before the pruning at k=2, two after
QUESTIONS = ["what colour is the small square", "which shape", "what colour is the background of this picture"]
SIZES = [(84, 112), (48, 48), (96, 60)]  # a 2x2 AnyRes grid, a single crop, a 2x1 grid: rows of different lengths


@pytest.fixture(scope="module", params=FAMILIES)
def host(request, benchmark_tokenizer):
    model, processor = build_reference_model(dataclasses.replace(tiny_config(request.param), text_layers=LAYERS),
                                             benchmark_tokenizer, seed=0)
    return SimpleNamespace(model=model.eval(), tokenizer=benchmark_tokenizer, image_processor=processor,
                           family=request.param)


IMAGES = noise_images(SIZES, seed=1)


def spliced(loaded, images=IMAGES, questions=QUESTIONS):
    runner = VisionLanguageRunner(loaded, FullTokens())
    pixels, image_sizes = runner.process_images(images)
    prompts = [prompt_ids(loaded.tokenizer, loaded.model.config.image_token_id, q) for q in questions]
    _, kept = runner.visual_tokens(pixels, image_sizes, [str(i) for i in range(len(images))])
    return runner.splice(prompts, kept)


def logits_per_step(model, run):
    """run()'s output and the logits of every LM-head call it made ([B, vocab] each)."""
    seen = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    try:
        out = run()
    finally:
        hook.remove()
    return out, seen


def base_logits(model, batch):
    with torch.no_grad():
        hidden = model.model.language_model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                            position_ids=batch.position_ids).last_hidden_state
        return model.lm_head(hidden)


# --------------------------------------------------------------------------------------------------------
# the invariants


@pytest.mark.parametrize("score", ["last", "mean"])
@pytest.mark.parametrize("k", [1, LAYERS - 1])
def test_ratio_zero_is_the_base_model_bit_for_bit(host, score, k):
    """R = 0 keeps every token: the prefill logits of every position and the greedy decode (ids and every step's
    logits, with the KV cache) equal the base model's exactly, padded rows included."""
    batch = spliced(host)
    assert len(set(batch.attention_mask.sum(1).tolist())) == 3  # left padding is exercised
    fastv = FastV(host.model, FastVConfig(k, 0.0, score))
    with torch.no_grad():
        hidden, pruning = fastv.forward(batch)
    assert torch.equal(pruning.index, torch.arange(batch.inputs_embeds.shape[1]).expand_as(pruning.index))
    assert torch.equal(host.model.lm_head(hidden), base_logits(host.model, batch))
    base, base_steps = logits_per_step(host.model, lambda: greedy_generate(host.model, batch, 5, None))
    ours, our_steps = logits_per_step(host.model, lambda: fastv.generate(batch, 5, None))
    assert ours.token_ids == base.token_ids
    assert len(our_steps) == len(base_steps) == 5
    assert all(torch.equal(a, b) for a, b in zip(our_steps, base_steps))


def test_pruning_changes_the_computation(host):
    batch = spliced(host)
    with torch.no_grad():
        hidden, pruning = FastV(host.model, FastVConfig(2, 0.75)).forward(batch)
    assert hidden.shape[1] < batch.inputs_embeds.shape[1]
    last = host.model.lm_head(hidden[:, -1])
    assert not torch.allclose(last, base_logits(host.model, batch)[:, -1], atol=1e-4)


@pytest.mark.parametrize("score", ["last", "mean"])
def test_attention_scores_equal_the_eager_attention_probabilities(host, score):
    """The recomputed probabilities of layer k-1 (norm, q/k projections, RoPE, GQA, causal and padding mask) equal
    what the same layer's eager attention returns (output_attentions), averaged as FastV averages them."""
    model = copy.deepcopy(host.model)
    lm = model.model.language_model
    lm.set_attn_implementation("eager")
    batch = spliced(host)
    with torch.no_grad():
        out = lm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                 position_ids=batch.position_ids, output_attentions=True, output_hidden_states=True)
        fastv = FastV(model, FastVConfig(2, 0.5, score))
        for layer in range(LAYERS):
            rotary = lm.rotary_emb(out.hidden_states[layer], batch.position_ids)
            ours = fastv.attention_scores(layer, out.hidden_states[layer], rotary, batch.attention_mask)
            probs = out.attentions[layer].float()  # [B, h, T, T]
            real = batch.attention_mask.bool()
            if score == "last":
                expected = probs[:, :, -1].mean(dim=1)
            else:
                expected = (probs * real[:, None, :, None]).sum(dim=2).mean(dim=1) / real.sum(1)[:, None]
            torch.testing.assert_close(ours[real], expected[real], rtol=1e-5, atol=1e-6)
            assert (ours[~real] == 0).all()


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.9])
def test_kept_tokens_are_the_top_round_n_times_one_minus_r_patches(host, ratio):
    """Per row: round(n (1 - R)) of its n patch tokens stay (Python's round, as the official code), the best-scored
    ones; every text and newline token stays; the kept tokens keep their order and original position ids."""
    batch = spliced(host)
    fastv = FastV(host.model, FastVConfig(2, ratio))
    with torch.no_grad():
        _, pruning = fastv.forward(batch)
        lm = host.model.model.language_model
        h = batch.inputs_embeds  # layer 0's output is layer 1's input, whose attention ranks at k = 2
        mask = create_causal_mask(config=lm.config, inputs_embeds=h, attention_mask=batch.attention_mask,
                                  past_key_values=None, position_ids=batch.position_ids)
        rotary = lm.rotary_emb(h, batch.position_ids)
        h = lm.layers[0](h, attention_mask=mask, position_embeddings=rotary, position_ids=batch.position_ids)
        scores = fastv.attention_scores(1, h, rotary, batch.attention_mask)
    patches = batch.visual_mask & ~batch.newline_mask
    assert batch.newline_mask.any() or host.family == "llava_next"  # OneVision's 2x2 grid has row newlines
    for row in range(3):
        n = int(patches[row].sum())
        kept = pruning.keep[row] & patches[row]
        assert int(kept.sum()) == pruning.patch_tokens[row] == round(n * (1 - ratio))
        dropped = patches[row] & ~pruning.keep[row]
        assert scores[row][kept].min() >= scores[row][dropped].max()
        others = batch.attention_mask[row].bool() & ~patches[row]
        assert pruning.keep[row][others].all()  # text and newline tokens
        assert pruning.visual_tokens[row] == pruning.patch_tokens[row] + int(batch.newline_mask[row].sum())
        width = pruning.index.shape[1]
        slots = pruning.attention_mask[row].bool()
        positions = torch.nonzero(pruning.keep[row]).squeeze(1)
        assert torch.equal(pruning.index[row][slots], positions)  # in order, right-aligned (left padding)
        assert slots[width - len(positions):].all() and not slots[: width - len(positions)].any()
        assert torch.equal(pruning.position_ids[row][slots], batch.position_ids[row][positions])


def test_ties_go_to_the_lower_position(host):
    batch = spliced(host, IMAGES[1:2], QUESTIONS[1:2])
    fastv = FastV(host.model, FastVConfig(1, 0.5))
    keep = fastv.select(torch.zeros(batch.attention_mask.shape), batch)  # every score equal
    patches = torch.nonzero(batch.visual_mask[0] & ~batch.newline_mask[0]).squeeze(1)
    n_keep = round(len(patches) * 0.5)
    assert keep[0][patches[:n_keep]].all() and not keep[0][patches[n_keep:]].any()


@pytest.mark.parametrize("score", ["last", "mean"])
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_cached_decode_equals_the_uncached_pruned_model(host, score, ratio):
    """Decoding with the KV cache (layers < k: the whole prompt, layers >= k: the pruned one) equals recomputing the
    pruned model from scratch for every new token with the prefill's kept tokens: ids, and logits at float32
    round-off (the cached steps run one query per layer, the recomputation the whole sequence)."""
    batch = spliced(host)
    fastv = FastV(host.model, FastVConfig(2, ratio, score))
    cached, cached_steps = logits_per_step(host.model, lambda: fastv.generate(batch, 5, None))
    fresh, fresh_steps = logits_per_step(host.model, lambda: fastv.generate(batch, 5, None, use_cache=False))
    assert cached.token_ids == fresh.token_ids
    assert cached.patch_tokens_after == fresh.patch_tokens_after
    assert len(cached_steps) == len(fresh_steps) == 5
    for a, b in zip(cached_steps, fresh_steps):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_padded_batch_gives_each_row_its_own_result(host):
    batch = spliced(host)
    fastv = FastV(host.model, FastVConfig(2, 0.75))
    together, steps = logits_per_step(host.model, lambda: fastv.generate(batch, 3, None))
    for row in range(3):
        alone_batch = spliced(host, IMAGES[row : row + 1], QUESTIONS[row : row + 1])
        alone, alone_steps = logits_per_step(host.model, lambda: fastv.generate(alone_batch, 3, None))
        assert alone.token_ids[0] == together.token_ids[row]
        assert alone.patch_tokens_after[0] == together.patch_tokens_after[row]
        for a, b in zip(alone_steps, steps):
            torch.testing.assert_close(a[0], b[row], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"k": 0, "ratio": 0.5}, r"k must be >= 1, got 0: FastV ranks .* random_drop or hired"),
    ({"k": 1.5, "ratio": 0.5}, "k must be an integer, got 1.5"),
    ({"k": "two", "ratio": 0.5}, "k must be an integer, got 'two'"),
    ({"k": True, "ratio": 0.5}, "k must be an integer, got True"),
    ({"k": 2, "ratio": 1.0}, r"ratio must be in \[0, 1\) \(the share of visual tokens dropped\), got 1.0"),
    ({"k": 2, "ratio": -0.1}, r"ratio must be in \[0, 1\)"),
    ({"k": 2, "ratio": float("nan")}, r"ratio must be in \[0, 1\)"),
    ({"k": 2, "ratio": "half"}, r"ratio must be a number in \[0, 1\)"),
    ({"k": 2, "ratio": 0.5, "score": "cls"}, "score must be one of last, mean, got 'cls'"),
])
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FastVConfig(**kwargs)


def test_k_must_leave_a_pruned_layer(host):
    assert FastVConfig("2", "0.5").k == 2 and FastVConfig(2.0, 0).ratio == 0.0  # lmms-eval's strings and numbers
    with pytest.raises(ValueError, match=f"k={LAYERS} but the LLM has {LAYERS} layers: FastV needs 1 <= k < {LAYERS}"):
        FastV(host.model, FastVConfig(LAYERS, 0.5))


# --------------------------------------------------------------------------------------------------------
# FLOPs


@pytest.mark.parametrize("score", ["last", "mean"])
def test_dense_accounting_equals_flop_counter(host, score):
    """The runner under FlopCounterMode (SDPA's math backend, so attention is counted): vision tower, projector and
    LM head term by term, the LLM (every layer at its own length, decode with the two caches, the ranking) and the
    total exactly; the ranking alone equals `rank_flops`."""
    fastv = FastV(host.model, FastVConfig(2, 0.5, score))
    runner = FastVRunner(host, fastv)
    counts, records = counted(host.model, lambda: runner.generate(noise_images([(84, 112)], seed=2), [QUESTIONS[0]],
                                                                  ["k"], [3]))
    record = records[0]
    tokens = SampleTokens.from_record(record, 3)
    assert record.fastv_k == 2 and tokens.visual_per_layer == record.visual_per_layer
    n_visual = record.visual_tokens + record.newline_tokens_kept
    assert record.visual_per_layer == (n_visual,) * 2 + (record.llm_visual_tokens_after_k,) * 2
    assert record.visual_tokens_after_k == round(record.visual_tokens * 0.5) < record.visual_tokens
    accountant = FlopAccountant.for_model(host.model, runner.reducer, fastv.config)
    dense = accountant.sample(tokens, "dense")
    root = "Harness.m"
    assert counts[f"{root}.model.vision_tower"] == dense.vision.total
    assert counts[f"{root}.model.multi_modal_projector"] == dense.projector.total
    assert counts[f"{root}.lm_head"] == dense.lm_head.total
    llm = counts["Global"] - sum(counts[f"{root}.{m}"] for m in ("model.vision_tower", "model.multi_modal_projector",
                                                                   "lm_head"))
    assert llm == dense.llm_prefill.total + dense.llm_decode.total
    assert counts["Global"] == dense.total
    rank = {k: v for k, v in dense.llm_prefill.items() if k.startswith("rank.")}
    assert sum(rank.values()) == dense.part("rank") > 0

    batch = spliced(host, noise_images([(84, 112)], seed=2), QUESTIONS[:1])
    lm = host.model.model.language_model
    rotary = lm.rotary_emb(batch.inputs_embeds, batch.position_ids)
    alone, _ = counted(host.model, lambda: fastv.attention_scores(1, batch.inputs_embeds, rotary, batch.attention_mask))
    n = batch.inputs_embeds.shape[1]
    assert alone["Global"] == rank_flops(accountant.shape.llm, n, score, "dense").total == dense.part("rank")


def test_accounting_per_layer_causal_dense_and_ratio_zero(host):
    accountant = FlopAccountant.for_model(host.model, FastVConfig(2, 0.5, "mean"))
    base = FlopAccountant.for_model(host.model)
    shape = accountant.shape.llm
    n_text, n_visual, kept = 20, 150, 80
    tokens = SampleTokens(n_text, n_visual, 5, produced=4, visual_per_layer=(n_visual,) * 2 + (kept,) * 2)
    dense, causal = accountant.sample(tokens, "dense"), accountant.sample(tokens, "causal")
    # per layer: the full length before k, the pruned one after; the ranking on top
    full = base.sample(SampleTokens(n_text, n_visual, 5, produced=4), "causal")
    pruned = base.sample(SampleTokens(n_text, kept, 5, produced=4), "causal")
    assert causal.part("sa") == (full.llm_prefill.total + pruned.llm_prefill.total) // 2
    assert causal.llm_decode.total == (full.llm_decode.total + pruned.llm_decode.total) // 2
    assert causal.fastv_macs == 2 * fastv_layer_macs(n_text + n_visual, shape.hidden, shape.intermediate) + \
        2 * fastv_layer_macs(n_text + kept, shape.hidden, shape.intermediate)
    # dense - causal: the masked prefill pairs of each layer and of the "mean" ranking's score product
    pairs = 2 * (n_text + n_visual) * (n_text + n_visual - 1) // 2 + 2 * (n_text + kept) * (n_text + kept - 1) // 2
    rank_pairs = (n_text + n_visual) * (n_text + n_visual - 1) // 2
    per_pair = 2 * shape.n_heads * shape.head_dim
    assert dense.llm_prefill.total - causal.llm_prefill.total == 2 * per_pair * pairs + per_pair * rank_pairs
    assert dense.llm_decode == causal.llm_decode and dense.lm_head == causal.lm_head
    # R = 0: the host's cost plus the ranking
    zero = accountant.sample(SampleTokens(n_text, n_visual, 5, produced=4, visual_per_layer=(n_visual,) * 4))
    assert zero.llm_prefill.total - zero.part("rank") == full.llm_prefill.total
    assert zero.llm_decode == full.llm_decode and zero.fastv_macs == full.fastv_macs
    record = accountant.record(tokens)
    assert record["flops_llm_prefill_rank"] == causal.part("rank") and record["layers_sa"] == LAYERS
    with pytest.raises(ValueError, match="a FastV accountant needs samples with visual_per_layer"):
        accountant.sample(SampleTokens(n_text, n_visual, 5))
    with pytest.raises(ValueError, match="carries visual_per_layer, but none of this accountant's methods takes it"):
        base.sample(tokens)
    with pytest.raises(ValueError, match=r"visual_per_layer must give 4 counts of at most n_visual \(150\)"):
        accountant.sample(SampleTokens(n_text, n_visual, 5, visual_per_layer=(n_visual, 151, 0, 0)))


def test_the_papers_45_percent_is_fastvs_own_formula_at_k2_r50_on_llava_15_13b():
    """FastV's "45% FLOPs reduction" (LLaVA-1.5-13B: 40 layers, d = 5120, m = 13824; 576 visual tokens and about 36
    text tokens, K = 2, R = 50%) is what `fastv_macs` gives for such a sample."""
    shape = LLMShape(hidden=5120, intermediate=13824, n_layers=40, n_heads=40, n_kv_heads=40, head_dim=128,
                     vocab=32000)
    full = fastv_prefill_macs(shape, 36, 576)
    fastv = fastv_prefill_macs(shape, 36, 576, visual_per_layer=(576,) * 2 + (288,) * 38)
    assert round(100 * (1 - fastv / full)) == 45


# --------------------------------------------------------------------------------------------------------
# the plugin


@pytest.fixture(scope="module")
def checkpoint(host, tmp_path_factory):
    return save_checkpoint(host.model, host.tokenizer, host.image_processor, tmp_path_factory.mktemp(host.family))


def test_plugin_logs_counts_and_flops_per_sample_in_request_order(host, checkpoint):
    from lmms_plugins.fastv import FastVLlava

    plugin = FastVLlava(pretrained=str(checkpoint), device="cpu", batch_size=2, k=2, ratio=0.75)
    assert plugin.label == "fastv[K=2,R=0.75]" and plugin.reducer.name == "full"
    plugin.task_dict, requests = requests_for(IMAGES, QUESTIONS)
    results = plugin.generate_until(requests)
    for result, image, question in zip(results, IMAGES, QUESTIONS):
        single = plugin.runner.generate([image], [question], ["x"], [3])[0]
        counts = result.token_counts.to_dict()
        expected = plugin.accountant.record(SampleTokens.from_record(single, 3))
        assert {k: counts[k] for k in expected} == expected
        assert result.text == single.answer
        assert counts["fastv_k"] == 2 and counts["visual_tokens_kept"] == counts["visual_tokens"]
        assert counts["visual_tokens_after_k"] == round(counts["visual_tokens"] * 0.25)
        assert counts["llm_visual_tokens_after_k"] == counts["visual_tokens_after_k"] + counts["newline_tokens_kept"]
        assert counts["flops_llm_prefill_rank"] > 0


def test_plugin_errors_name_the_argument(checkpoint, tmp_path):
    from lmms_plugins.fastv import FastVLlava

    missing = str(tmp_path / "missing")  # the arguments are checked before the checkpoint is loaded
    with pytest.raises(ValueError, match="fastv needs k=K and ratio=R"):
        FastVLlava(pretrained=missing, ratio=0.5)
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        FastVLlava(pretrained=missing, k=2, ratio=1)
    with pytest.raises(ValueError, match="score must be one of last, mean"):
        FastVLlava(pretrained=missing, k=2, ratio=0.5, score="cls")
    with pytest.raises(ValueError, match=f"k=9 but the LLM has {LAYERS} layers"):
        FastVLlava(pretrained=str(checkpoint), device="cpu", k=9, ratio=0.5)
    mean = FastVLlava(pretrained=str(checkpoint), device="cpu", k="1", ratio="0.5", score="mean")
    assert mean.label == "fastv[K=1,R=0.5,mean]" and mean.accountant.costs[-1].score == "mean"


def test_plugin_works_through_the_latency_path(checkpoint):
    """What measure_latency gets from a plugin (runner, accountant, label) times FastV's own generation and
    charges its FLOPs: the prefill equals the evaluation's for the same input."""
    from lmms_plugins.fastv import FastVLlava
    from visor_model.efficiency.latency import LatencyConfig, TimedSetting, fixed_inputs, measure_latency

    plugin = FastVLlava(pretrained=str(checkpoint), device="cpu", k=2, ratio=0.5)
    inputs = fixed_inputs(2)
    timed = TimedSetting("fastv/k-2_ratio-0.5", plugin.runner, plugin.accountant, plugin.label)
    (record,) = measure_latency([timed], inputs, LatencyConfig(samples=2, warmup=0, repeats=1,
                                                                max_new_tokens=2))["settings"]
    assert record["label"] == "fastv[K=2,R=0.5]"
    for (image, question), flops in zip(inputs, record["flops"]["per_sample"]):
        evaluated = plugin.runner.generate([image], [question], ["x"], [2])[0]
        expected = plugin.accountant.record(SampleTokens.from_record(evaluated, 2))
        assert flops["flops_llm_prefill"] == expected["flops_llm_prefill"]
        assert flops["flops_llm_prefill_rank"] == expected["flops_llm_prefill_rank"] > 0


def test_entry_point_registers_fastv():
    from lmms_eval.models import get_model

    assert get_model("fastv").__name__ == "FastVLlava"


@pytest.mark.slow
def test_lmms_eval_evaluates_fastv_on_a_synthetic_task(checkpoint, task_dir, tmp_path):
    """One real evaluation: lmms-eval's evaluator and task definition, the plugin registered by its entry point."""
    from lmms_plugins.run import run_lmms_eval

    run = run_lmms_eval("fastv", {"pretrained": str(checkpoint), "device": "cpu", "k": 2, "ratio": 0.5},
                        "synth_marker", tmp_path / "out", tmp_path / "log", include_path=task_dir, batch_size=4,
                        expected_samples=8, max_empty_fraction=1.0)
    assert set(run.results["results"]["synth_marker"]) >= {"exact_match,none", "anls,none"}
    for sample in run.samples:
        counts = sample["token_counts"][0]
        assert counts["fastv_k"] == 2 and counts["visual_tokens_after_k"] == round(counts["visual_tokens"] * 0.5)
        assert counts["flops_llm_prefill_rank"] > 0 and counts["flops_llm_prefill"] > 0
    assert run.results["throughput"]["avg_flops_llm_prefill"] > 0


# --------------------------------------------------------------------------------------------------------
# the report's series and the claim


def test_series_and_setting_label():
    row = {"method": "fastv", "k": 2.0, "ratio": 0.5, "score": "last"}
    assert analysis.series_key(row) == "fastv" and analysis.SERIES_LABELS["fastv"] == "FastV"
    assert analysis.setting_label(row) == "K 2, R 0.5"
    assert "FastV" in analysis.PALETTE and "FastV" in analysis.MARKERS


def fastv_latency(factor: float) -> pd.DataFrame:
    """The fake tables' latency record of reference_ov (its llava_full setting) plus a FastV K=2 R=0.5 setting
    timed beside it whose prefill takes `factor` times llava_full's in every (interleaved) repeat."""
    _, latencies = fake_results.records(n=2)
    record = copy.deepcopy(next(r for r in latencies if r["model"] == "reference_ov"))
    full = next(s for s in record["settings"] if s["method"] == "llava_full")
    fastv = copy.deepcopy(full)
    fastv.update(name="fastv/k-2_ratio-0.5", label="fastv[K=2,R=0.5]", method="fastv", setting_id="k-2_ratio-0.5",
                 setting={"k": 2, "ratio": 0.5})
    prefill = full["timings"]["prefill_s"]
    fastv["timings"]["prefill_s"].update({key: factor * prefill[key] for key in ("median", "ci_low", "ci_high")},
                                         per_repeat=[factor * v for v in prefill["per_repeat"]])
    record["settings"] = [full, fastv]
    return latency_table([record])


@pytest.mark.parametrize("factor,verdict", [(0.7, "reproduced"), (1.2, "not reproduced")])
def test_the_prefill_speed_up_claim_can_fail(factor, verdict):
    summary, samples, _ = fake_results.tables(n=4)
    base = summary[(summary["model"] == "reference_ov") & (summary["method"] == "llava_full")]
    claims = [c for c in load_claims(CLAIMS) if c["id"] == "fastv_prefill_faster_sdpa_cache"]
    row = audit(claims, Tables(base, samples, fastv_latency(factor)), "offline").iloc[0]
    assert row["verdict"] == verdict, row["reason"]
    assert row["reproduced_value"] == pytest.approx(1 / factor)
    missing = audit(claims, Tables(base, samples, fastv_latency(1.0).iloc[:1]), "offline").iloc[0]
    assert missing["verdict"] == "not testable in this profile" and "FastV" in missing["reason"]
