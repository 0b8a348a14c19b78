"""Analytic FLOP counts (visor_model.efficiency.flops) checked against torch's FlopCounterMode on tiny real models.

What FlopCounterMode (torch 2.13) counts for attention, as these tests pin down:
  * eager attention (HF ``eager_attention_forward``: matmul, additive causal mask, softmax, matmul):
    two ``aten.bmm`` per layer over *all* query-key pairs, i.e. dense; the causal mask saves nothing.
  * SDPA on the math backend (``sdpa_kernel(SDPBackend.MATH)``): decomposes to ``aten.bmm``, also dense,
    whether or not ``is_causal=True``.
  * SDPA on CPU with the default backend: dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu``,
    which has no FLOP formula, so **attention is counted as zero** (projections and MLP still count).
    On CUDA the flash/efficient/cuDNN SDPA ops are registered and counted dense (torch source comment:
    "We aren't accounting for causal attention here"); that path needs a GPU and is not exercised here.
Hence the analytic ``causal_mode="dense"`` count is the one that equals the counter, exactly.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    DynamicCache,
    LlamaConfig,
    LlamaModel,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.llava_next.modeling_llava_next import LlavaNextMultiModalProjector
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionMultiModalProjector

from visor_model.efficiency.flops import (
    FlopTerms,
    attention_pairs,
    cross_attention_flops,
    depthwise_conv1d_flops,
    fastv_layer_macs,
    llm_flops,
    llm_layer_flops,
    lm_head_flops,
    mlp_flops,
    model_prefill_flops,
    projector_flops,
    vision_encoder_flops,
    vision_layer_flops,
)
from visor_model.efficiency.shapes import LlavaShape, LLMShape, ProjectorShape, VisionShape, vision_layers_needed

torch.manual_seed(0)

# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def count(fn, backend: SDPBackend | None = None):
    """Run ``fn()`` under no_grad and FlopCounterMode; return ({module name: flops}, output)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        if backend is None:
            with counter:
                out = fn()
        else:
            with sdpa_kernel(backend), counter:
                out = fn()
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return by_module, out


TINY_VISION = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}  # 4 x 4 patches of 8 px per 32 px crop
TINY = {
    # grouped-query attention: 4 query heads share 2 key/value heads
    Qwen2Config: {
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
        "max_position_embeddings": 256,
    },
    # head_dim (32) != hidden / heads (16), and one shared KV head: exercises both GQA and head_dim
    LlamaConfig: {
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "vocab_size": 96,
        "max_position_embeddings": 256,
    },
    CLIPVisionConfig: TINY_VISION,
    SiglipVisionConfig: TINY_VISION,
}


def tiny(config_cls, impl: str = "eager", **overrides):
    """A tiny `config_cls` (one of TINY's keys): TINY's sizes, `overrides` on top, attention implementation `impl`."""
    cfg = config_cls(**{**TINY[config_cls], **overrides})
    cfg._attn_implementation = impl
    return cfg


MODELS = {"qwen2": (Qwen2Config, Qwen2Model), "llama": (LlamaConfig, LlamaModel)}
LAYER_TERMS = {
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "o_proj",
    "mlp.gate_proj": "mlp_gate",
    "mlp.up_proj": "mlp_up",
    "mlp.down_proj": "mlp_down",
}


def assert_llm_layers_match(by_module: dict, root: str, expected: FlopTerms, n_layers: int):
    """Per-layer, per-term equality; attention (scores + values) is what self_attn does beyond its projections."""
    for i in range(n_layers):
        layer = f"{root}.layers.{i}"
        for module, term in LAYER_TERMS.items():
            assert by_module[f"{layer}.{module}"] == expected[term], (layer, module)
        projections = sum(by_module[f"{layer}.self_attn.{p}"] for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        attention = by_module[f"{layer}.self_attn"] - projections
        assert attention == expected["attn_scores"] + expected["attn_values"], layer
        assert by_module[layer] == expected.total, layer


# ----------------------------------------------------------------------------------------------------
# shapes from configs
# ----------------------------------------------------------------------------------------------------


def test_llm_shape_from_qwen2_and_llama_configs():
    q = LLMShape.from_config(tiny(Qwen2Config))
    assert q == LLMShape(hidden=64, intermediate=160, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, vocab=128)
    llama = LLMShape.from_config(tiny(LlamaConfig))
    assert (llama.head_dim, llama.q_dim, llama.kv_dim) == (32, 128, 32)
    # real Qwen2-0.5B (LLaVA-OV 0.5B's LLM)
    real = LLMShape.from_config(
        Qwen2Config(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
        )
    )
    assert (real.head_dim, real.kv_dim) == (64, 128)


def test_vision_and_projector_shapes_from_configs():
    clip_l = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )  # CLIP ViT-L/14-336, LLaVA-NeXT's encoder
    clip = VisionShape.from_config(clip_l)
    assert (clip.has_cls, clip.n_patches, clip.tokens_per_crop) == (True, 576, 577)
    siglip = VisionShape.from_config(SiglipVisionConfig(image_size=384, patch_size=14, vision_use_head=False))
    assert (siglip.has_cls, siglip.n_patches, siglip.tokens_per_crop) == (False, 729, 729)

    next_cfg = LlavaNextConfig(vision_config=clip_l)
    nxt = LlavaShape.from_config(next_cfg)
    # LLaVA-NeXT: feature layer -2 -> the last CLIP layer is not needed (HF still runs it); "default" drops CLS
    assert nxt.vision_feature_layer == -2 and nxt.vision_layers_needed == 23
    assert nxt.projector_tokens_per_crop == 576
    assert nxt.projector == ProjectorShape(in_features=1024, out_features=4096)
    ov = LlavaShape.from_config(LlavaOnevisionConfig())
    assert ov.vision_layers_needed == ov.vision.n_layers and ov.projector_tokens_per_crop == ov.vision.tokens_per_crop
    # several feature layers are concatenated before linear_1
    multi = ProjectorShape.from_config(LlavaNextConfig(vision_config=clip_l, vision_feature_layer=[-2, -5]))
    assert multi.in_features == 2 * 1024
    assert vision_layers_needed(24, [-5, 3]) == 20
    assert vision_layers_needed(24, 0) == 0


# ----------------------------------------------------------------------------------------------------
# LLM against FlopCounterMode
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen2", "llama"])
@pytest.mark.parametrize("impl,backend", [("eager", None), ("sdpa", SDPBackend.MATH)])
def test_llm_prefill_matches_counter_per_term(name, impl, backend):
    config_cls, model_cls = MODELS[name]
    cfg = tiny(config_cls, impl)
    model = model_cls(cfg).eval()
    n = 13
    by_module, _ = count(lambda: model(torch.randint(0, cfg.vocab_size, (1, n)), use_cache=False), backend)

    shape = LLMShape.from_config(cfg)
    expected = llm_layer_flops(shape, n_new=n, n_context=n, causal_mode="dense")
    assert_llm_layers_match(by_module, model_cls.__name__, expected, shape.n_layers)
    assert by_module["Global"] == llm_flops(shape, n, n).total  # exact, not just within 1%
    # the causal count is strictly smaller: the counter does not count masking savings
    assert llm_flops(shape, n, n, "causal").total < by_module["Global"]


def test_sdpa_is_causal_is_counted_dense():
    q, k, v = torch.randn(1, 4, 10, 16), torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    causal, _ = count(lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True), SDPBackend.MATH)
    full, _ = count(lambda: sdpa(q, k, v, is_causal=False, enable_gqa=True), SDPBackend.MATH)
    assert causal["Global"] == full["Global"] == 2 * (2 * 10 * 10 * 4 * 16)


def test_default_cpu_sdpa_attention_is_not_counted():
    """torch 2.13: the CPU flash SDPA kernel has no FLOP formula, so FlopCounterMode misses attention."""
    cfg = tiny(Qwen2Config, "sdpa")
    model = Qwen2Model(cfg).eval()
    n = 13
    by_module, _ = count(lambda: model(torch.randint(0, cfg.vocab_size, (1, n)), use_cache=False))
    terms = llm_flops(LLMShape.from_config(cfg), n, n)
    assert by_module["Global"] == terms.total - terms["attn_scores"] - terms["attn_values"]


@pytest.mark.parametrize("name", ["qwen2", "llama"])
@pytest.mark.parametrize("impl,backend", [("eager", None), ("sdpa", SDPBackend.MATH)])
def test_decode_step_with_kv_cache_matches_counter(name, impl, backend):
    config_cls, model_cls = MODELS[name]
    cfg = tiny(config_cls, impl)
    model = model_cls(cfg).eval()
    past = 9
    with torch.no_grad():
        prefill = model(torch.randint(0, cfg.vocab_size, (1, past)), use_cache=True)
    cache = prefill.past_key_values
    assert isinstance(cache, DynamicCache) and cache.get_seq_length() == past

    next_token = torch.randint(0, cfg.vocab_size, (1, 1))
    by_module, _ = count(lambda: model(next_token, past_key_values=cache, use_cache=True), backend)

    shape = LLMShape.from_config(cfg)
    expected = llm_layer_flops(shape, n_new=1, n_context=past + 1)
    assert_llm_layers_match(by_module, model_cls.__name__, expected, shape.n_layers)
    assert by_module["Global"] == llm_flops(shape, 1, past + 1).total
    # for a decode step nothing is masked: dense == causal
    assert expected == llm_layer_flops(shape, 1, past + 1, "causal")


@pytest.mark.parametrize("logits_to_keep,n_tokens", [(1, 1), (0, 11)])
def test_lm_head_matches_counter(logits_to_keep, n_tokens):
    cfg = tiny(Qwen2Config)
    model = Qwen2ForCausalLM(cfg).eval()
    by_module, out = count(lambda: model(torch.randint(0, cfg.vocab_size, (1, 11)), logits_to_keep=logits_to_keep))
    assert out.logits.shape[1] == n_tokens
    shape = LLMShape.from_config(cfg)
    assert by_module["Qwen2ForCausalLM.lm_head"] == lm_head_flops(shape, n_tokens).total == 2 * n_tokens * 64 * 128
    assert by_module["Global"] == llm_flops(shape, 11, 11).total + lm_head_flops(shape, n_tokens).total


# ----------------------------------------------------------------------------------------------------
# vision tower and projector against FlopCounterMode
# ----------------------------------------------------------------------------------------------------

VISION_TERMS = {
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.out_proj": "o_proj",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
}


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip_with_head"])
@pytest.mark.parametrize("impl,backend", [("eager", None), ("sdpa", SDPBackend.MATH)])
def test_vision_encoder_matches_counter_per_term(kind, impl, backend):
    if kind == "clip":
        cfg, model_cls = tiny(CLIPVisionConfig, impl), CLIPVisionModel
    else:
        cfg, model_cls = tiny(SiglipVisionConfig, impl, vision_use_head=kind == "siglip_with_head"), SiglipVisionModel
    model = model_cls(cfg).eval()
    n_crops = 3
    by_module, _ = count(lambda: model(pixel_values=torch.randn(n_crops, 3, 32, 32)), backend)

    root = model_cls.__name__  # transformers 5: the tower's modules sit directly under the model
    vshape = VisionShape.from_config(cfg)
    assert vshape.tokens_per_crop == (17 if kind == "clip" else 16)
    total = vision_encoder_flops(vshape, n_crops)
    per_layer = vision_layer_flops(vshape, vshape.tokens_per_crop) * n_crops
    assert by_module[f"{root}.embeddings.patch_embedding"] == total["patch_embed"]
    for i in range(vshape.n_layers):
        layer = f"{root}.encoder.layers.{i}"
        for module, term in VISION_TERMS.items():
            assert by_module[f"{layer}.{module}"] == per_layer[term], (layer, module)
        projections = sum(by_module[f"{layer}.{m}"] for m in VISION_TERMS if m.startswith("self_attn"))
        assert by_module[f"{layer}.self_attn"] - projections == per_layer["attn_scores"] + per_layer["attn_values"]
    if kind == "siglip_with_head":
        assert by_module[f"{root}.head"] == total["pool_head"]
    else:
        assert "pool_head" not in total
    assert by_module["Global"] == total.total


@pytest.mark.parametrize(
    "projector_cls,config_cls",
    [
        (LlavaNextMultiModalProjector, LlavaNextConfig),
        (LlavaOnevisionMultiModalProjector, LlavaOnevisionConfig),
    ],
)
@pytest.mark.parametrize("feature_layer", [-2, [-2, -1]])
def test_projector_matches_counter(projector_cls, config_cls, feature_layer):
    cfg = config_cls(
        text_config=tiny(Qwen2Config, intermediate_size=96, num_hidden_layers=1),
        vision_config=tiny(SiglipVisionConfig),
        vision_feature_layer=feature_layer,
    )
    projector = projector_cls(cfg).eval()
    pshape = ProjectorShape.from_config(cfg)
    n_tokens = 37
    by_module, _ = count(lambda: projector(torch.randn(n_tokens, pshape.in_features)))
    expected = projector_flops(pshape, n_tokens)
    root = projector_cls.__name__
    assert by_module[f"{root}.linear_1"] == expected["linear_1"]
    assert by_module[f"{root}.linear_2"] == expected["linear_2"]
    assert by_module["Global"] == expected.total


# ----------------------------------------------------------------------------------------------------
# whole LLaVA models end to end
# ----------------------------------------------------------------------------------------------------


def tiny_llava(kind: str):
    if kind == "onevision":
        text = tiny(Qwen2Config)
        vision = tiny(SiglipVisionConfig, num_hidden_layers=3, vision_use_head=False)
        cfg = LlavaOnevisionConfig(
            text_config=text,
            vision_config=vision,
            image_token_index=120,
            video_token_index=121,
            image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
        )
        model_cls = LlavaOnevisionForConditionalGeneration
    else:
        text = tiny(LlamaConfig)
        vision = tiny(CLIPVisionConfig, num_hidden_layers=3)
        # LLaVA-NeXT defaults: vision_feature_layer=-2, strategy "default" (drop CLS)
        cfg = LlavaNextConfig(
            text_config=text,
            vision_config=vision,
            image_token_index=90,
            image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
        )
        model_cls = LlavaNextForConditionalGeneration
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = "eager"
    return cfg, model_cls(cfg).eval()


@pytest.mark.parametrize("kind", ["onevision", "next"])
def test_llava_prefill_matches_counter_end_to_end(kind):
    cfg, model = tiny_llava(kind)
    n_crops = 5  # a 64x48 image -> 2x2 grid of 32-pixel crops + the resized base image
    pixel_values = torch.randn(1, n_crops, 3, 32, 32)
    image_sizes = torch.tensor([[64, 48]])
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes)
    n_visual = sum(f.shape[0] for f in features.pooler_output)  # after un-padding and newline tokens
    n_text = 7
    input_ids = torch.cat(
        [
            torch.randint(0, 80, (1, 3)),
            torch.full((1, n_visual), cfg.image_token_index),
            torch.randint(0, 80, (1, n_text - 3)),
        ],
        dim=1,
    )
    by_module, _ = count(
        lambda: model(input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes, logits_to_keep=1)
    )

    shape = LlavaShape.from_config(cfg)
    flops = model_prefill_flops(shape, n_text=n_text, n_visual=n_visual, n_crops=n_crops)
    root = type(model).__name__
    assert by_module[f"{root}.model.vision_tower"] == flops.vision_encoder.total  # all layers run
    assert by_module[f"{root}.model.multi_modal_projector"] == flops.projector.total
    assert by_module[f"{root}.model.language_model"] == flops.llm_prefill
    assert by_module[f"{root}.lm_head"] == flops.lm_head.total
    assert by_module["Global"] == flops.total
    assert flops.as_dict()["total"] == flops.total
    if kind == "next":
        # the truncated tower (vision_feature_layer=-2) would skip one of the 3 layers
        truncated = model_prefill_flops(
            shape, n_text=n_text, n_visual=n_visual, n_crops=n_crops, vision_layers=shape.vision_layers_needed
        )
        assert shape.vision_layers_needed == 2 and truncated.vision_encoder.total < flops.vision_encoder.total


def test_model_prefill_text_only_and_headline():
    cfg, _ = tiny_llava("onevision")
    shape = LlavaShape.from_config(cfg)
    text_only = model_prefill_flops(shape, n_text=5, n_visual=0, n_crops=0)
    assert text_only.vision_encoder.total == text_only.projector.total == 0
    assert text_only.llm_prefill == llm_flops(shape.llm, 5, 5).total
    causal = model_prefill_flops(shape, n_text=5, n_visual=20, n_crops=1, causal_mode="causal")
    assert causal.llm_prefill == llm_flops(shape.llm, 25, 25, "causal").total


# ----------------------------------------------------------------------------------------------------
# causal vs dense, FastV, extra terms
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_new,n_context", [(1, 1), (13, 13), (612, 612), (1, 40), (3, 10)])
def test_causal_minus_dense_is_exactly_the_masked_pairs(n_new, n_context):
    shape = LLMShape.from_config(tiny(Qwen2Config))
    dense = llm_layer_flops(shape, n_new, n_context, "dense")
    causal = llm_layer_flops(shape, n_new, n_context, "causal")
    masked = n_new * (n_new - 1) // 2  # keys in the future of each new query
    assert attention_pairs(n_new, n_context, "dense") - attention_pairs(n_new, n_context, "causal") == masked
    per_pair = 2 * shape.n_heads * shape.head_dim  # one term (scores or values)
    assert dense.total - causal.total == 2 * per_pair * masked
    for term in dense:
        if term not in ("attn_scores", "attn_values"):
            assert dense[term] == causal[term]
    if n_new == n_context:  # prefill: n(n+1)/2 pairs
        assert attention_pairs(n_new, n_context, "causal") == n_new * (n_new + 1) // 2


def test_fastv_reproduces_published_per_layer_figure():
    """FastV (Chen et al. 2024) reports "99.3B" for LLaVA-1.5-7B (Vicuna-7B: d = 4096, m = 11008, 32 layers)
    at n = 612 tokens (576 visual + 36 text). Their formula 4nd^2 + 2n^2 d + 2ndm evaluates to 99.33e9
    for ONE layer, in multiply-accumulates: so the published number is the per-layer MAC count of the
    formula (not FLOPs, not the 32-layer model, which would be 3.18e12 MACs / 6.36e12 FLOPs)."""
    macs = fastv_layer_macs(612, 4096, 11008)
    assert macs == 99_327_541_248
    assert round(macs / 1e9, 1) == 99.3
    assert round(32 * macs / 1e9, 1) != 99.3 and round(2 * macs / 1e9, 1) != 99.3
    # against the exact count for the same (MHA, SwiGLU) layer: FastV omits the third MLP matrix
    llama7b = LLMShape(
        hidden=4096, intermediate=11008, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128, vocab=32000
    )
    exact = llm_layer_flops(llama7b, 612, 612, "dense").total
    assert exact - 2 * macs == 2 * 612 * 4096 * 11008


class TinyCrossAttention(nn.Module):
    """A plain GQA cross-attention block: text queries, visual keys/values, tanh gate."""

    def __init__(self, d, n_heads, n_kv_heads, head_dim):
        super().__init__()
        self.h, self.kv, self.hd = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(d, n_heads * head_dim)
        self.k_proj = nn.Linear(d, n_kv_heads * head_dim)
        self.v_proj = nn.Linear(d, n_kv_heads * head_dim)
        self.o_proj = nn.Linear(n_heads * head_dim, d)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, text, visual):  # text (b, nt, d), visual (b, nv, d)
        b, nt, _ = text.shape
        nv = visual.shape[1]
        q = self.q_proj(text).view(b, nt, self.h, self.hd).transpose(1, 2)  # (b, h, nt, hd)
        k = self.k_proj(visual).view(b, nv, self.kv, self.hd).transpose(1, 2)  # (b, kv, nv, hd)
        v = self.v_proj(visual).view(b, nv, self.kv, self.hd).transpose(1, 2)
        k = k.repeat_interleave(self.h // self.kv, dim=1)  # (b, h, nv, hd)
        v = v.repeat_interleave(self.h // self.kv, dim=1)
        att = (q @ k.transpose(-1, -2) / math.sqrt(self.hd)).softmax(-1)  # (b, h, nt, nv)
        out = (att @ v).transpose(1, 2).reshape(b, nt, self.h * self.hd)
        return torch.tanh(self.gate) * self.o_proj(out)


def test_cross_attention_matches_counter():
    shape = LLMShape.from_config(tiny(Qwen2Config))
    block = TinyCrossAttention(shape.hidden, shape.n_heads, shape.n_kv_heads, shape.head_dim).eval()
    n_text, n_visual = 6, 21
    by_module, _ = count(lambda: block(torch.randn(1, n_text, shape.hidden), torch.randn(1, n_visual, shape.hidden)))
    terms = cross_attention_flops(shape, n_text, n_visual, with_gate=True)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert by_module[f"TinyCrossAttention.{name}"] == terms[name]
    assert terms["gate"] == n_text * shape.hidden  # elementwise: not seen by the counter
    assert by_module["Global"] == terms.total - terms["gate"]
    assert cross_attention_flops(shape, n_text, n_visual, with_gate=False).total == terms.total - terms["gate"]


def test_depthwise_conv1d_and_mlp_match_counter():
    channels, length = 64, 50
    conv = nn.Conv1d(channels, channels, kernel_size=7, padding=3, groups=channels)
    by_module, _ = count(lambda: conv(torch.randn(1, channels, length)))
    assert by_module["Global"] == depthwise_conv1d_flops(channels, length, 7).total == 2 * channels * length * 7
    assert depthwise_conv1d_flops(channels, length, 7, padding=0)["conv"] == 2 * channels * (length - 6) * 7

    sizes = [64, 32, 16, 5]
    router = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 5))
    by_module, _ = count(lambda: router(torch.randn(3, 64)))
    terms = mlp_flops(sizes, n_tokens=3)
    assert terms.keys() == ["linear_0", "linear_1", "linear_2"]
    assert by_module["Global"] == terms.total


# ----------------------------------------------------------------------------------------------------
# containers and errors
# ----------------------------------------------------------------------------------------------------


def test_flop_terms_arithmetic():
    a = FlopTerms.of({"x": 1, "y": 2})
    b = FlopTerms.of({"y": 10, "z": 5})
    assert (a + b).as_dict() == {"x": 1, "y": 12, "z": 5}
    assert (3 * a).total == 9 and (a * 0).total == 0
    assert dict(a) == {"x": 1, "y": 2} and "x" in a and len(a) == 2
    assert a.prefixed("llm.").keys() == ["llm.x", "llm.y"]
    with pytest.raises(KeyError):
        a["nope"]


SHAPE = LLMShape.from_config(tiny(Qwen2Config))
VSHAPE = VisionShape.from_config(tiny(SiglipVisionConfig, vision_use_head=False))


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda: llm_layer_flops(SHAPE, float("nan"), 4), "n_new"),
        (lambda: llm_layer_flops(SHAPE, 0, 4), "n_new"),
        (lambda: llm_layer_flops(SHAPE, 2, -4), "n_context"),
        (lambda: llm_layer_flops(SHAPE, 5, 4), "n_context"),
        (lambda: llm_layer_flops(SHAPE, 2.5, 4), "n_new"),
        (lambda: llm_layer_flops(SHAPE, 4, 4, "sparse"), "causal_mode"),
        (lambda: llm_flops(SHAPE, 4, 4, n_layers=-1), "n_layers"),
        (lambda: lm_head_flops(SHAPE, 0), "n_tokens"),
        (lambda: vision_encoder_flops(VSHAPE, float("nan")), "n_crops"),
        (lambda: vision_encoder_flops(VSHAPE, 1, n_layers=3), "n_layers"),
        (lambda: projector_flops(ProjectorShape(48, 64), -1), "n_tokens"),
        (lambda: cross_attention_flops(SHAPE, 3, 0), "n_visual"),
        (lambda: cross_attention_flops(SHAPE, float("inf"), 3), "n_text"),
        (lambda: depthwise_conv1d_flops(0, 10, 7), "channels"),
        (lambda: depthwise_conv1d_flops(4, 10, float("nan")), "kernel"),
        (lambda: mlp_flops([64, 0, 5]), "sizes[1]"),
        (lambda: mlp_flops([64]), "sizes"),
        (lambda: fastv_layer_macs(612, float("nan"), 11008), "d"),
        (lambda: fastv_layer_macs(-612, 4096, 11008), "n"),
        (lambda: LLMShape(64, 160, 2, 4, 0, 16, 128), "n_kv_heads"),
        (lambda: LLMShape(64, 160, 2, 4, 3, 16, 128), "n_kv_heads"),
        (lambda: VisionShape(48, 96, 2, 4, image_size=float("nan"), patch_size=8), "image_size"),
        (
            lambda: model_prefill_flops(
                LlavaShape(SHAPE, VSHAPE, ProjectorShape(48, 64)), n_text=0, n_visual=1, n_crops=1
            ),
            "n_text",
        ),
        (
            lambda: model_prefill_flops(
                LlavaShape(SHAPE, VSHAPE, ProjectorShape(48, 64)), n_text=3, n_visual=-1, n_crops=1
            ),
            "n_visual",
        ),
        (
            lambda: model_prefill_flops(
                LlavaShape(SHAPE, VSHAPE, ProjectorShape(48, 64)), n_text=3, n_visual=1, n_crops=float("nan")
            ),
            "n_crops",
        ),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError) as excinfo:
        call()
    # the argument's name appears as a whole word (so "n" does not match inside "n_new")
    assert re.search(rf"(?<![\w\[]){re.escape(argument)}(?![\w\[])", str(excinfo.value)), str(excinfo.value)
