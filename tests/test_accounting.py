"""Per-sample FLOP accounting (visor_model.efficiency.accounting) against torch's FlopCounterMode on real forward
passes.

Every method runs through its real runner (vision tower, projector, token selection, splice, greedy generation
with a KV cache) on tiny reference models, under FlopCounterMode with SDPA forced to the math backend (so that
attention is counted; it is counted dense). The accounting's "dense" count must equal the counter exactly,
term by term where the counter separates modules (vision tower, projector, LLM, LM head, VISOR's CA blocks,
positional conv and router) and in total. The causal count (the headline) is then reconciled with the dense one
exactly: they differ by the masked (query, key) pairs of self-attention at prefill, nothing else.
The FastV "99.3 GMAC" check lives in tests/test_flops.py.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import noise_images, save_checkpoint, tiny_config
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from visor_model.efficiency.accounting import (
    CA,
    SA,
    TEXT,
    FlopAccountant,
    SampleTokens,
    fastv_prefill_macs,
    llm_decode_flops,
    llm_prefill_flops,
    produced_tokens,
)
from visor_model.efficiency.flops import fastv_layer_macs, llm_layer_flops, projector_flops
from visor_model.efficiency.shapes import LLMShape
from visor_model.llava.runner import VisionLanguageRunner
from visor_model.methods.base import FullTokens, RandomDrop
from visor_model.methods.downsample import Downsample
from visor_model.methods.hired import HiRED
from visor_model.methods.visionzip import VisionZip
from visor_model.methods.visor.modeling import VisorConfig, VisorModel
from visor_model.methods.visor.runner import VisorRunner
from visor_model.reference.models import build_reference_model

QUESTION = "what colour is the small square"
LIMIT = 3  # max_new_tokens


class Harness(nn.Module):
    """A root module, so that FlopCounterMode names every submodule by its path (m.model.vision_tower, ...)."""

    def __init__(self, module):
        super().__init__()
        self.m = module

    def forward(self, fn):
        return fn()


def counted(module, fn) -> tuple[dict, object]:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        out = Harness(module)(fn)
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}, out


@pytest.fixture(scope="module")
def hosts(benchmark_tokenizer):
    """Tiny LLaVA-OneVision (SigLIP, Qwen2) and LLaVA-NeXT (CLIP with CLS, Llama) models with 6 LLM layers."""
    out = {}
    for family in ("llava_onevision", "llava_next"):
        model, processor = build_reference_model(dataclasses.replace(tiny_config(family), text_layers=6),
                                                 benchmark_tokenizer, seed=0)
        out[family] = SimpleNamespace(model=model.eval(), tokenizer=benchmark_tokenizer, image_processor=processor)
    return out


def image(seed=0):
    return noise_images([(84, 112)], seed=seed)  # a 2x2 AnyRes grid: 5 crops


# ----------------------------------------------------------------------------------------------------------
# host-model methods: full, random_drop, hired, visionzip, downsample


METHODS = {
    "full": lambda model: FullTokens(),
    "random_drop": lambda model: RandomDrop(0.3, seed=0),
    "hired_paper": lambda model: HiRED(0.3, mode="paper", model=model),
    "hired_reference_code": lambda model: HiRED(0.3, mode="reference_code", model=model),
    "visionzip": lambda model: VisionZip(0.3, model=model),  # merges: key comparisons, contextual re-projected
    "visionzip_dominant_only": lambda model: VisionZip(0.3, dominant_ratio=1.0, model=model),
    "downsample_base_only": lambda model: Downsample("base_only"),  # one crop encoded
    "downsample_budget": lambda model: Downsample("scale", budget=0.5),  # a smaller image: 3 crops of 5
}
SELECTING = ("hired", "visionzip")  # methods with work outside the model's modules


@pytest.mark.parametrize("family", ["llava_onevision", "llava_next"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_dense_accounting_equals_flop_counter_term_by_term(hosts, family, method):
    loaded = hosts[family]
    reducer = METHODS[method](loaded.model)
    runner = VisionLanguageRunner(loaded, reducer)
    calls = []
    hook = loaded.model.model.language_model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        counts, records = counted(loaded.model, lambda: runner.generate(image(), [QUESTION], ["k"], [LIMIT]))
    finally:
        hook.remove()
    record = records[0]
    tokens = SampleTokens.from_record(record, LIMIT)
    # greedy_generate runs exactly the decode steps the sample needs (LLM calls - the prefill)
    assert len(calls) - 1 == tokens.decode_steps
    accountant = FlopAccountant.for_model(loaded.model, reducer)
    dense = accountant.sample(tokens, "dense")

    root = "Harness.m"
    assert counts[f"{root}.model.vision_tower"] == dense.vision.total  # every layer runs
    assert counts[f"{root}.model.multi_modal_projector"] == dense.projector.total
    assert counts[f"{root}.model.language_model"] == dense.llm_prefill.total + dense.llm_decode.total
    assert counts[f"{root}.lm_head"] == dense.lm_head.total
    assert counts["Global"] == dense.total
    # HiRED's and VisionZip's attention scores (and VisionZip's key comparisons) are the only work outside those
    # modules
    outside = counts["Global"] - sum(counts[f"{root}.{m}"] for m in
                                     ("model.vision_tower", "model.multi_modal_projector", "model.language_model",
                                      "lm_head"))
    assert outside == dense.selection.total
    assert (dense.selection.total > 0) == method.startswith(SELECTING)
    if method == "visionzip":  # the merge happened: its comparisons and re-projected tokens are charged
        assert dense.selection["merge.similarity"] > 0
        every_patch = projector_flops(accountant.shape.projector, 5 * accountant.shape.projector_tokens_per_crop)
        assert dense.projector.total > every_patch.total
    if method.startswith("downsample"):  # the tower ran on fewer crops than the image's 5
        assert tokens.n_crops == 1 if method == "downsample_base_only" else 1 < tokens.n_crops < 5
    # the per-sample record: visual tokens that entered the LLM, essential decode steps
    assert tokens.n_visual == record.visual_tokens_kept + record.newline_tokens_kept
    assert tokens.produced == produced_tokens(record.generated_tokens, LIMIT, record.finish_reason)
    logged = accountant.record(tokens)
    assert logged["flops_llm_prefill_dense"] == dense.llm_prefill.total
    assert logged["flops_llm_decode"] == llm_decode_flops(accountant.shape.llm, tokens.n_text, tokens.n_visual,
                                                         tokens.produced - 1).total
    assert logged["layers_sa"] == 6 and logged["layers_ca"] == logged["layers_text"] == 0


# ----------------------------------------------------------------------------------------------------------
# VISOR: fixed configuration with SA, CA and text-only layers; VISOR-TR; the policy


@pytest.fixture(scope="module")
def visor(hosts):
    loaded = hosts["llava_onevision"]
    model = VisorModel(loaded.model, VisorConfig(n_layers=6))  # CA (0, 3), SA candidates (1, 4), text (2, 5)
    model.set_viable(model.config.family())  # router: d -> 64 -> 3 at layer 1
    with torch.no_grad():
        for block in model.visor.cross.values():
            block.gate.fill_(0.5)
    return loaded, model


@pytest.mark.parametrize("case", ["fixed", "visor_tr", "policy"])
def test_visor_dense_accounting_equals_flop_counter_term_by_term(visor, case):
    loaded, model = visor
    reducer = HiRED(0.3, mode="paper") if case == "visor_tr" else None
    active = None if case == "policy" else (1,)
    runner = VisorRunner(loaded, model, reducer, active=active, threshold=0.5 if case == "policy" else None)
    counts, records = counted(model, lambda: runner.generate(image(1), [QUESTION], ["k"], [LIMIT]))
    record = records[0]
    tokens = SampleTokens.from_record(record, LIMIT)  # VisorModel.generate runs exactly the needed steps
    if case != "policy":
        assert record.roles == (CA, SA, TEXT, CA, TEXT, TEXT)
    assert tokens.routed == (case == "policy")
    accountant = FlopAccountant.for_model(loaded.model, runner.reducer, model)
    dense = accountant.sample(tokens, "dense")

    root = "Harness.m"
    vision = counts[f"{root}.base.model.vision_tower"]
    projector = counts[f"{root}.base.model.multi_modal_projector"]
    layers = sum(counts[f"{root}.base.model.language_model.layers.{layer}"] for layer in range(6))
    # a CA block's forward (queries, attention, output) plus its visual K/V projections, which
    # `CrossAttention.visual_kv` runs outside forward (once per prefill)
    cross = sum(counts[f"{root}.visor.cross.{layer}"] + counts[f"{root}.visor.cross.{layer}.k_proj"]
                + counts[f"{root}.visor.cross.{layer}.v_proj"] for layer in model.config.ca_layers)
    conv = counts[f"{root}.visor.pos_conv"]
    router = counts.get(f"{root}.visor.router", 0)
    lm_head = counts[f"{root}.base.lm_head"]

    def part(flops, name):
        return sum(v for k, v in flops.items() if k.startswith(name + "."))

    assert vision == dense.vision.total
    assert projector == dense.projector.total
    assert lm_head == dense.lm_head.total
    assert conv == part(dense.llm_prefill, "conv") > 0
    prefill, decode = dense.llm_prefill, dense.llm_decode
    router_mlp = sum(v for k, v in prefill.items() if k.startswith("router.linear_"))
    assert router == router_mlp and (router > 0) == (case == "policy")
    # host decoder layers (SA, text-only and CA host layers) + CA blocks + the routing token's share of both
    assert layers + cross == (part(prefill, "sa") + part(prefill, "text") + part(prefill, "ca")
                              + part(prefill, "router") - router_mlp + decode.total)
    assert counts["Global"] == dense.total
    assert (dense.selection.total > 0) == (case == "visor_tr")
    if case == "fixed":  # the CA blocks alone: prefill K/V once, queries per prefill and decode token
        assert cross == part(prefill, "ca") + part(decode, "ca")


# ----------------------------------------------------------------------------------------------------------
# causal vs dense, decode, FastV


def masked_pairs(n: int) -> int:
    return n * (n - 1) // 2


@pytest.mark.parametrize("roles,routed", [
    (None, False),
    ((CA, SA, TEXT, CA, TEXT, TEXT), False),
    ((CA, TEXT, TEXT, CA, SA, TEXT), True),
    ((CA, TEXT, TEXT, CA, TEXT, TEXT), True),
])
@pytest.mark.parametrize("n_text,n_visual", [(7, 166), (40, 0), (1, 729)])
def test_causal_and_dense_differ_exactly_by_the_masked_prefill_pairs(hosts, roles, routed, n_text, n_visual):
    """dense - causal = 2 terms x 2 h hd x masked pairs, summed over every self-attention at prefill:
    n (n - 1) / 2 for an SA layer (n = text + visual) or a text-only / CA host layer (n = text); the routing
    token adds n_text + 1 - 1 = n_text masked pairs in each layer before the router. Everything else
    (projections, MLPs, CA blocks, conv, router MLP, vision, projector, decode, LM head) is equal."""
    model = hosts["llava_onevision"].model
    visor = VisorModel(model, VisorConfig(n_layers=6))
    visor.set_viable(visor.config.family())
    accountant = FlopAccountant.for_model(model, None, visor)
    tokens = SampleTokens(n_text, n_visual, 5, produced=4, roles=roles, routed=routed)
    dense, causal = accountant.sample(tokens, "dense"), accountant.sample(tokens, "causal")
    shape = accountant.shape.llm
    all_roles = roles or (SA,) * 6
    pairs = sum(masked_pairs(n_text + n_visual if r == SA else n_text) for r in all_roles)
    if routed:
        pairs += visor.config.router_layer * (masked_pairs(n_text + 1) - masked_pairs(n_text))
    assert dense.llm_prefill.total - causal.llm_prefill.total == 2 * 2 * shape.n_heads * shape.head_dim * pairs
    for name in ("vision", "projector", "selection", "llm_decode", "lm_head"):
        assert getattr(dense, name) == getattr(causal, name)
    assert dense.fastv_macs == causal.fastv_macs
    for key, value in dense.llm_prefill.items():
        if not key.endswith(("attn_scores", "attn_values")) or key.startswith("ca."):
            assert causal.llm_prefill[key] == value, key


@pytest.mark.parametrize("steps", [0, 1, 5])
def test_decode_closed_form_is_the_sum_of_single_steps(steps):
    shape = LLMShape(hidden=64, intermediate=160, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16, vocab=100)
    roles = (CA, SA, TEXT, SA)
    n_text, n_visual = 9, 30
    expected = 0
    for s in range(1, steps + 1):
        expected += 2 * llm_layer_flops(shape, 1, n_text + n_visual + s).total  # SA layers see everything
        expected += 2 * llm_layer_flops(shape, 1, n_text + s).total  # text-only and CA host layers: text only
        expected += 2 * 1 * 64 * 64 * 2 + 2 * 2 * n_visual * 64  # CA block: q, o on one token; scores, values
    assert llm_decode_flops(shape, n_text, n_visual, steps, roles).total == expected


def test_fastv_convention_of_the_host_and_of_visor():
    shape = LLMShape(hidden=4096, intermediate=11008, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128,
                     vocab=32000)
    assert fastv_prefill_macs(shape, 36, 576) == 32 * fastv_layer_macs(612, 4096, 11008)
    roles = (CA, SA, TEXT) * 10 + (TEXT, TEXT)
    d, m = 4096, 11008
    expected = 10 * fastv_layer_macs(612, d, m) + 22 * fastv_layer_macs(36, d, m)
    expected += 10 * (2 * 36 * d * d + 2 * 576 * d * d + 2 * 36 * 576 * d)
    assert fastv_prefill_macs(shape, 36, 576, roles) == expected


def test_produced_tokens_and_bad_inputs():
    assert produced_tokens(0, 4, "eos") == 1  # end-of-sequence right away: one LM-head call
    assert produced_tokens(2, 4, "eos") == 3  # two tokens, then eos
    assert produced_tokens(2, 4, "stop") == 2  # the second token completed a stop string: nothing more
    assert produced_tokens(4, 4, "length") == 4  # the limit: no eos needed
    assert produced_tokens(4, 4, "stop") == 4
    with pytest.raises(ValueError, match="exceeds"):
        produced_tokens(5, 4, "length")
    with pytest.raises(ValueError, match="cannot have stopped on eos"):
        produced_tokens(4, 4, "eos")
    with pytest.raises(ValueError, match=r"stopped by length generates max_new_tokens \(4\), got 3"):
        produced_tokens(3, 4, "length")
    with pytest.raises(ValueError, match="finish_reason must be one of eos, stop, length"):
        produced_tokens(3, 4, "done")
    shape = LLMShape(hidden=8, intermediate=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=4, vocab=10)
    with pytest.raises(ValueError, match="roles"):
        llm_prefill_flops(shape, 3, 4, roles=(SA,))
    with pytest.raises(ValueError, match="router_sizes"):
        llm_prefill_flops(shape, 3, 4, roles=(CA, SA), router_layer=1)


# ----------------------------------------------------------------------------------------------------------
# the per-sample log (plugins) and the summary table


def requests_for(images, questions, limit=LIMIT):
    docs = [{"i": i} for i in range(len(images))]
    task_dict = {"t": {"test": docs}}
    requests = [SimpleNamespace(args=(q, {"max_new_tokens": limit, "until": []}, lambda doc: [images[doc["i"]]],
                                      i, "t", "test")) for i, q in enumerate(questions)]
    return task_dict, requests


def test_plugins_log_flops_per_sample_in_request_order(visor, benchmark_tokenizer, tmp_path):
    """EfficientLlava.token_counts (hired, visionzip), DownsampleLlava (counts_class) and VisorLlava (counts_class +
    build_accountant): every per-sample entry carries the FLOP terms of its own sample, in request order (batches
    are sorted by prompt length)."""
    from lmms_plugins.models import DownsampleLlava, HiredLlava, VisionZipLlava
    from lmms_plugins.visor import VisorLlava
    from visor_model.methods.visor.modeling import save_visor

    loaded, model = visor
    folder = tmp_path / "visor"
    save_visor(model, folder, benchmark_tokenizer, loaded.image_processor)
    images = noise_images([(84, 112), (48, 48), (96, 96)], seed=3)
    questions = [QUESTION, "what colour is the background of this picture", "which shape"]
    for plugin in (HiredLlava(pretrained=str(folder), device="cpu", batch_size=2, budget=0.5),
                   VisionZipLlava(pretrained=str(folder), device="cpu", batch_size=2, budget=0.3),
                   DownsampleLlava(pretrained=str(folder), device="cpu", batch_size=2, mode="scale", budget=0.5),
                   VisorLlava(pretrained=str(folder), device="cpu", batch_size=2, sa_layers=1)):
        plugin.task_dict, requests = requests_for(images, questions)
        results = plugin.generate_until(requests)
        for result, img, question in zip(results, images, questions):
            single = plugin.runner.generate([img], [question], ["x"], [LIMIT])[0]
            counts = result.token_counts.to_dict()
            expected = plugin.accountant.record(SampleTokens.from_record(single, LIMIT))
            assert {k: counts[k] for k in expected} == expected
            assert result.text == single.answer
            assert counts["llm_visual_tokens"] > 0 and counts["flops_llm_prefill"] > 0
            if isinstance(plugin, VisorLlava):
                assert plugin.label == "visor[sa=1]" and plugin.reducer.name == "full"  # label, not a renamed reducer
                assert counts["roles"] == list(plugin.visor.config.roles(plugin.runner.active))
                assert counts["layers_sa"] == counts["sa_layers"] == 1 and counts["flops_llm_prefill_ca"] > 0
            elif isinstance(plugin, DownsampleLlava):
                assert plugin.label == "downsample" and counts["input_scale"] == single.input_scale
                assert counts["crops"] == single.crops and counts["flops_selection"] == 0
            else:
                assert plugin.label == plugin.reducer.name in ("hired", "visionzip")
                assert counts["flops_selection"] > 0 and counts["layers_sa"] == 6


def fake_record(method, model, benchmark, prefill, n=4):
    samples = [{"score": float(i % 2), "flops_llm_prefill": prefill, "flops_total": 2 * prefill,
                "flops_vision": 10, "fastv_macs": prefill // 2, "layers_sa": 2, "layers_ca": 2,
                "llm_visual_tokens": 100, "visual_tokens": 100, "visual_tokens_kept": 100} for i in range(n)]
    return {"model": model, "method": method, "setting_id": "default", "setting": {}, "benchmark": benchmark,
            "kind": "fine", "cluster": "hard", "n": n, "metrics": {}, "samples": samples,
            "primary_metric": {"name": "exact_match", "value": 50.0, "scale": "0-100", "factor": 100, "mean": True},
            "checkpoint": {"family": "llava_onevision", "source": "x", "weights_sha256": "0"},
            "provenance": {"device": "cpu", "versions": {"torch": "x"}, "lock": {"sha256": "0" * 64}}}


def test_summary_has_mean_flops_and_the_prefill_ratio_to_llava_full():
    from visor_model.audit.tables import summary_table

    records = [fake_record("llava_full", "a", "b1", 1000), fake_record("visor", "a", "b1", 250),
               fake_record("visor", "a", "b2", 250)]  # no baseline on b2
    summary = summary_table(records)
    assert list(summary["mean_flops_llm_prefill"]) == [1000, 250, 250]
    assert summary["llm_prefill_ratio"].iloc[0] == 1.0 and summary["llm_prefill_ratio"].iloc[1] == 0.25
    assert pd.isna(summary["llm_prefill_ratio"].iloc[2])
    assert summary["mean_layers_sa"].iloc[1] == 2 and summary["mean_visual_token_layers_ca"].iloc[1] == 200
    assert {"mean_flops_total", "mean_flops_vision", "mean_fastv_macs"} <= set(summary.columns)


def test_saved_checkpoint_accounting_uses_the_loaded_config(hosts, benchmark_tokenizer, tmp_path):
    """FlopAccountant.for_model reads the shapes from the loaded model's config (a save / load round trip)."""
    from visor_model.llava.checkpoints import load_checkpoint

    loaded = hosts["llava_next"]
    folder = save_checkpoint(loaded.model, benchmark_tokenizer, loaded.image_processor, tmp_path / "next")
    reloaded = load_checkpoint(str(folder))
    assert FlopAccountant.for_model(reloaded.model).shape == FlopAccountant.for_model(loaded.model).shape
