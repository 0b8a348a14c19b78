"""Exact analytic FLOP counts for LLaVA-style vision-language models.

Conventions (read these before quoting a number)
-------------------------------------------------
* **FLOPs = 2 x multiply-accumulates (MACs).** A matmul of an (m, k) by a (k, n) matrix costs 2*m*k*n.
  This is the convention of `torch.utils.flop_counter.FlopCounterMode`. The one exception is
  `fastv_layer_macs`, which returns MACs because that is the unit FastV (and the papers that copy it) use.
* **Only matmul-class work is counted**: linear layers, attention score and attention-times-value
  products, convolutions. Bias additions, norms, activations, softmax, RoPE, residual additions and
  embedding look-ups are left out, exactly as FlopCounterMode leaves them out. They are small next to
  the matmuls (O(n*d), plus O(n^2 * heads) for softmax: a few percent at most, at long sequences).
* **Attention is counted per query head.** With grouped-query attention the K/V *projections* are
  smaller (n_kv_heads * head_dim outputs), but the score and value products still run once per query
  head: 2 * n_q * n_k * n_heads * head_dim each.
* **Causal masking**: ``causal_mode="dense"`` counts every (query, key) pair, ``n_new * n_context``,
  which is what FlopCounterMode reports for both eager attention (a full QK^T matmul followed by an
  additive mask) and SDPA with ``is_causal=True`` (torch's formula ignores the flag). ``"causal"`` counts
  only the unmasked pairs, the work a causal kernel such as FlashAttention actually needs (about half of
  the dense attention terms at prefill). The projections and MLP do not depend on the mode.
* Everything is exact Python integers; no global state.

FlopCounterMode facts checked with torch 2.13 (see tests/test_flops.py):
  - eager attention: the two `aten.bmm` calls are counted, dense (masked pairs included);
  - SDPA forced to the math backend: decomposes to `bmm`, counted dense even with ``is_causal=True``;
  - SDPA on CPU with the default backend dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu``,
    which has no registered formula: **attention is counted as zero**. On CUDA the flash / efficient /
    cuDNN SDPA kernels are registered and counted dense (torch's source: "We aren't accounting for causal
    attention here").

Typical use (the model's sizes: `visor_model.efficiency.shapes`)::

    shape = LlavaShape.from_config(model.config)        # LlavaNextConfig or LlavaOnevisionConfig
    flops = model_prefill_flops(shape, n_text=40, n_visual=1500, n_crops=5)
    flops.llm_prefill    # the papers' headline quantity (LLM only, prefill only), in FLOPs
    flops.as_dict()      # vision_encoder / projector / llm_prefill / lm_head / total
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from visor_model.efficiency.shapes import LlavaShape, LLMShape, ProjectorShape, VisionShape, check_count

__all__ = [
    "CAUSAL_MODES",
    "FlopTerms",
    "ModelFlops",
    "attention_pairs",
    "cross_attention_flops",
    "depthwise_conv1d_flops",
    "fastv_layer_macs",
    "llm_flops",
    "llm_layer_flops",
    "lm_head_flops",
    "mlp_flops",
    "model_prefill_flops",
    "projector_flops",
    "vision_encoder_flops",
    "vision_layer_flops",
]

CAUSAL_MODES = ("dense", "causal")


def _check_mode(causal_mode: str) -> str:
    if causal_mode not in CAUSAL_MODES:
        raise ValueError(f"causal_mode must be one of {CAUSAL_MODES}, got {causal_mode!r}")
    return causal_mode


# ----------------------------------------------------------------------------------------------------
# result container
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopTerms:
    """An ordered, immutable set of named FLOP terms.

    Behaves like a read-only mapping (``terms["q_proj"]``, ``.items()``, ``dict(terms)``) and adds
    ``.total``. ``a + b`` sums term by term (union of names); ``k * terms`` scales every term.
    """

    terms: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, mapping: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> FlopTerms:
        items = mapping.items() if isinstance(mapping, Mapping) else mapping
        return cls(tuple((str(k), int(v)) for k, v in items))

    @property
    def total(self) -> int:
        return sum(v for _, v in self.terms)

    def as_dict(self) -> dict[str, int]:
        return dict(self.terms)

    def keys(self):
        return [k for k, _ in self.terms]

    def values(self):
        return [v for _, v in self.terms]

    def items(self):
        return list(self.terms)

    def __getitem__(self, name: str) -> int:
        for k, v in self.terms:
            if k == name:
                return v
        raise KeyError(name)

    def get(self, name: str, default: int = 0) -> int:
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        return any(k == name for k, _ in self.terms)

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.terms)

    def __add__(self, other: FlopTerms) -> FlopTerms:
        if not isinstance(other, FlopTerms):
            return NotImplemented
        out = dict(self.terms)
        for k, v in other.terms:
            out[k] = out.get(k, 0) + v
        return FlopTerms.of(out)

    def __mul__(self, k: int) -> FlopTerms:
        k = check_count("k", k, allow_zero=True)
        return FlopTerms(tuple((name, v * k) for name, v in self.terms))

    __rmul__ = __mul__

    def prefixed(self, prefix: str) -> FlopTerms:
        """The same terms with names ``f"{prefix}{name}"``."""
        return FlopTerms(tuple((prefix + k, v) for k, v in self.terms))

# ----------------------------------------------------------------------------------------------------
# LLM terms
# ----------------------------------------------------------------------------------------------------


def attention_pairs(n_new: int, n_context: int, causal_mode: str = "dense") -> int:
    """Number of (query, key) pairs for ``n_new`` queries over ``n_context`` key positions, where the
    queries are the last ``n_new`` positions (past = n_context - n_new).

    dense:  n_new * n_context                              (what FlopCounterMode counts)
    causal: n_new * past + n_new * (n_new + 1) / 2         (the unmasked pairs; prefill n(n+1)/2,
                                                            a decode step n_context)
    """
    n_new = check_count("n_new", n_new)
    n_context = check_count("n_context", n_context)
    _check_mode(causal_mode)
    if n_context < n_new:
        raise ValueError(f"n_context ({n_context}) must be >= n_new ({n_new}); n_context = past + n_new")
    if causal_mode == "dense":
        return n_new * n_context
    past = n_context - n_new
    return n_new * past + n_new * (n_new + 1) // 2


def llm_layer_flops(shape: LLMShape, n_new: int, n_context: int, causal_mode: str = "dense") -> FlopTerms:
    """FLOPs of one Qwen2/Llama decoder layer for ``n_new`` query tokens over ``n_context`` keys.

    Prefill of n tokens: ``n_new = n_context = n``. One decode step with a KV cache holding ``past``
    tokens: ``n_new = 1, n_context = past + 1``.

    causal_mode="dense" counts all n_new * n_context score/value pairs. **This is what FlopCounterMode
    reports** for eager attention and for SDPA (is_causal is ignored by its formula). "causal" counts only
    the unmasked pairs, the true minimum a causal kernel must do. They differ only at prefill (for a
    decode step every cached key is visible, so both give n_context pairs).

    Terms (d = hidden, h = n_heads, kv = n_kv_heads, hd = head_dim, m = intermediate, P = pairs):
        q_proj      2 * n_new * d * (h * hd)
        k_proj      2 * n_new * d * (kv * hd)      # grouped-query attention: smaller than q_proj
        v_proj      2 * n_new * d * (kv * hd)
        o_proj      2 * n_new * (h * hd) * d
        attn_scores 2 * P * h * hd                 # Q K^T, once per *query* head
        attn_values 2 * P * h * hd                 # softmax(.) V
        mlp_gate    2 * n_new * d * m              # SwiGLU: three matrices
        mlp_up      2 * n_new * d * m
        mlp_down    2 * n_new * m * d
    """
    pairs = attention_pairs(n_new, n_context, causal_mode)
    n = check_count("n_new", n_new)
    d, m = shape.hidden, shape.intermediate
    return FlopTerms.of(
        {
            "q_proj": 2 * n * d * shape.q_dim,
            "k_proj": 2 * n * d * shape.kv_dim,
            "v_proj": 2 * n * d * shape.kv_dim,
            "o_proj": 2 * n * shape.q_dim * d,
            "attn_scores": 2 * pairs * shape.n_heads * shape.head_dim,
            "attn_values": 2 * pairs * shape.n_heads * shape.head_dim,
            "mlp_gate": 2 * n * d * m,
            "mlp_up": 2 * n * d * m,
            "mlp_down": 2 * n * m * d,
        }
    )


def llm_flops(
    shape: LLMShape,
    n_new: int,
    n_context: int,
    causal_mode: str = "dense",
    n_layers: int | None = None,
) -> FlopTerms:
    """`llm_layer_flops` summed over ``n_layers`` identical layers (default: all of ``shape.n_layers``).
    Excludes the LM head; see `lm_head_flops`."""
    n_layers = shape.n_layers if n_layers is None else check_count("n_layers", n_layers, allow_zero=True)
    return llm_layer_flops(shape, n_new, n_context, causal_mode) * n_layers


def lm_head_flops(shape: LLMShape, n_tokens: int) -> FlopTerms:
    """LM head (hidden -> vocab) on ``n_tokens`` positions: ``2 * n_tokens * d * vocab``.

    During ``generate`` HF passes ``logits_to_keep=1``, so prefill computes logits for the last position
    only (n_tokens = 1) and each decode step for its one new token. A plain ``model(**inputs)`` call
    (logits_to_keep=0) computes them for every position (n_tokens = sequence length).
    """
    n_tokens = check_count("n_tokens", n_tokens)
    return FlopTerms.of({"lm_head": 2 * n_tokens * shape.hidden * shape.vocab})


# ----------------------------------------------------------------------------------------------------
# vision tower and projector
# ----------------------------------------------------------------------------------------------------


def vision_layer_flops(vshape: VisionShape, n_tokens: int) -> FlopTerms:
    """One ViT encoder layer on a sequence of ``n_tokens`` (bidirectional attention: dense is exact).

    q_proj/k_proj/v_proj/o_proj  2 * N * d * d each
    attn_scores, attn_values     2 * N * N * d each
    fc1, fc2                     2 * N * d * m each
    """
    n = check_count("n_tokens", n_tokens)
    d, m = vshape.hidden, vshape.intermediate
    return FlopTerms.of(
        {
            "q_proj": 2 * n * d * d,
            "k_proj": 2 * n * d * d,
            "v_proj": 2 * n * d * d,
            "o_proj": 2 * n * d * d,
            "attn_scores": 2 * n * n * d,
            "attn_values": 2 * n * n * d,
            "fc1": 2 * n * d * m,
            "fc2": 2 * n * m * d,
        }
    )


def vision_encoder_flops(vshape: VisionShape, n_crops: int, n_layers: int | None = None) -> FlopTerms:
    """The vision tower on ``n_crops`` crops of ``image_size`` pixels (LLaVA-NeXT anyres: base image +
    up to 4 sub-images; LLaVA-OV anyres_max_9: up to 10).

    ``n_layers`` defaults to all layers, which is what HF runs even when ``vision_feature_layer = -2``
    (pass `shapes.vision_layers_needed(...)` for the cost of a tower truncated to what is used).

    Terms: ``patch_embed`` (the patch conv, 2 * n_patches * d * channels * patch^2 per crop; CLIP's CLS
    token and the position embeddings cost no matmul FLOPs), the per-layer terms of `vision_layer_flops`
    summed over layers, and, if ``vshape.use_head`` (SigLIP's attention-pooling head), ``pool_head``.
    """
    n_crops = check_count("n_crops", n_crops)
    n_layers = vshape.n_layers if n_layers is None else check_count("n_layers", n_layers, allow_zero=True)
    if n_layers > vshape.n_layers:
        raise ValueError(f"n_layers ({n_layers}) exceeds the encoder's {vshape.n_layers} layers")
    d, m, n = vshape.hidden, vshape.intermediate, vshape.tokens_per_crop
    # patch conv: every output patch is a (channels * patch^2) -> d matmul
    patch_embed = 2 * vshape.n_patches * d * vshape.num_channels * vshape.patch_size**2
    terms = FlopTerms.of({"patch_embed": patch_embed}) + vision_layer_flops(vshape, n) * n_layers
    if vshape.use_head:
        # SiglipMultiheadAttentionPoolingHead: one learned probe query attends the N encoder outputs
        # (torch.nn.MultiheadAttention: q in-proj on 1 token, packed k/v in-proj on N tokens, scores and
        # values over N keys, out-proj on 1 token), then fc1/fc2 on the 1 pooled token.
        head = 2 * d * d + 2 * n * d * (2 * d) + 2 * n * d + 2 * n * d + 2 * d * d + 2 * d * m * 2
        terms = terms + FlopTerms.of({"pool_head": head})
    return terms * n_crops


def projector_flops(pshape: ProjectorShape, n_tokens: int) -> FlopTerms:
    """``multi_modal_projector`` on ``n_tokens`` visual features.

    In HF LLaVA-NeXT/OV the projector runs on *every* selected encoder token of every crop
    (n_crops * projector_tokens_per_crop), before un-padding, newline insertion or OV's downscaling;
    token-dropping methods that act after the projector (HiRED) do not save this.
    """
    n = check_count("n_tokens", n_tokens)
    return FlopTerms.of(
        {
            "linear_1": 2 * n * pshape.in_features * pshape.out_features,
            "linear_2": 2 * n * pshape.out_features * pshape.out_features,
        }
    )


# ----------------------------------------------------------------------------------------------------
# extra terms that methods add
# ----------------------------------------------------------------------------------------------------


def cross_attention_flops(shape: LLMShape, n_text: int, n_visual: int, with_gate: bool = True) -> FlopTerms:
    """An added cross-attention block: ``n_text`` text queries attend ``n_visual`` visual keys/values
    (no mask, so dense is exact), with its own q/k/v/o projections shaped like the host layer's
    (grouped-query: k/v project to n_kv_heads * head_dim).

        q_proj      2 * n_text * d * (h * hd)
        k_proj      2 * n_visual * d * (kv * hd)
        v_proj      2 * n_visual * d * (kv * hd)
        o_proj      2 * n_text * (h * hd) * d
        attn_scores 2 * n_text * n_visual * h * hd
        attn_values 2 * n_text * n_visual * h * hd
        gate        n_text * d     (with_gate: a Flamingo-style tanh(alpha) * output, one multiply per
                                    element; elementwise, so FlopCounterMode would not count it)
    """
    n_text = check_count("n_text", n_text)
    n_visual = check_count("n_visual", n_visual)
    d = shape.hidden
    terms = {
        "q_proj": 2 * n_text * d * shape.q_dim,
        "k_proj": 2 * n_visual * d * shape.kv_dim,
        "v_proj": 2 * n_visual * d * shape.kv_dim,
        "o_proj": 2 * n_text * shape.q_dim * d,
        "attn_scores": 2 * n_text * n_visual * shape.n_heads * shape.head_dim,
        "attn_values": 2 * n_text * n_visual * shape.n_heads * shape.head_dim,
    }
    if with_gate:
        terms["gate"] = n_text * d
    return FlopTerms.of(terms)


def depthwise_conv1d_flops(channels: int, length: int, kernel: int, padding: int | None = None) -> FlopTerms:
    """A depth-wise 1-D convolution (groups = channels), e.g. VISOR's conditional positional embedding
    (kernel 7, padding 3). ``padding`` defaults to (kernel - 1) // 2 ("same" for odd kernels).

        conv  2 * channels * length_out * kernel,  length_out = length + 2 * padding - kernel + 1
    """
    channels = check_count("channels", channels)
    length = check_count("length", length)
    kernel = check_count("kernel", kernel)
    padding = (kernel - 1) // 2 if padding is None else check_count("padding", padding, allow_zero=True)
    length_out = length + 2 * padding - kernel + 1
    if length_out < 1:
        raise ValueError(f"kernel ({kernel}) is longer than the padded length ({length} + 2 * {padding})")
    return FlopTerms.of({"conv": 2 * channels * length_out * kernel})


def mlp_flops(sizes: Sequence[int], n_tokens: int = 1) -> FlopTerms:
    """A plain MLP (e.g. a router) with layer widths ``sizes = [in, hidden..., out]`` on ``n_tokens``
    inputs: terms ``linear_0, linear_1, ...`` = 2 * n_tokens * sizes[i] * sizes[i + 1]."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise ValueError(f"sizes must be a sequence of at least two layer widths, got {sizes!r}")
    sizes = [check_count(f"sizes[{i}]", s) for i, s in enumerate(sizes)]
    n = check_count("n_tokens", n_tokens)
    return FlopTerms.of({f"linear_{i}": 2 * n * a * b for i, (a, b) in enumerate(itertools.pairwise(sizes))})


def fastv_layer_macs(n: int, d: int, m: int) -> int:
    """FastV's per-layer prefill cost, in **multiply-accumulates**: ``4nd^2 + 2n^2 d + 2ndm``.

    The convention most token-pruning papers copy (LLM only, prefill only). It treats K/V projections
    as d x d (no grouped-query attention), counts only two of SwiGLU's three matrices, counts all n^2
    attention pairs, and leaves out the vision tower, projector, LM head and decoding. Multiply by 2 for
    FLOPs comparable to the rest of this module. FastV's "99.3B" for LLaVA-1.5-7B at n = 612
    (d = 4096, m = 11008) is this function's value, i.e. one layer, in MACs.
    """
    n = check_count("n", n)
    d = check_count("d", d)
    m = check_count("m", m)
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


# ----------------------------------------------------------------------------------------------------
# whole model
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFlops:
    """Per-component FLOPs of one LLaVA prefill. ``llm_prefill`` is the papers' headline quantity."""

    vision_encoder: FlopTerms = field(default_factory=FlopTerms)
    projector: FlopTerms = field(default_factory=FlopTerms)
    llm: FlopTerms = field(default_factory=FlopTerms)  # decoder layers, summed over layers, per term
    lm_head: FlopTerms = field(default_factory=FlopTerms)

    @property
    def llm_prefill(self) -> int:
        return self.llm.total

    @property
    def total(self) -> int:
        return self.vision_encoder.total + self.projector.total + self.llm.total + self.lm_head.total

    def as_dict(self) -> dict[str, int]:
        return {
            "vision_encoder": self.vision_encoder.total,
            "projector": self.projector.total,
            "llm_prefill": self.llm_prefill,
            "lm_head": self.lm_head.total,
            "total": self.total,
        }


def model_prefill_flops(
    shape: LlavaShape,
    *,
    n_text: int,
    n_visual: int,
    n_crops: int,
    n_projector_tokens: int | None = None,
    vision_layers: int | None = None,
    causal_mode: str = "dense",
    lm_head_tokens: int = 1,
) -> ModelFlops:
    """FLOPs of one LLaVA-NeXT / LLaVA-OneVision prefill (batch 1).

    n_text:             text tokens in the LLM prompt (>= 1).
    n_visual:           visual tokens entering the LLM, after any un-padding, newline insertion, OV
                        downscaling or token dropping (0 for a text-only prompt).
    n_crops:            crops the vision tower encodes (0 for a text-only prompt).
    n_projector_tokens: tokens through the projector; default n_crops * shape.projector_tokens_per_crop
                        (HF projects every token before un-padding; a method that drops tokens before the
                        projector passes its own count).
    vision_layers:      encoder layers run; default all (what HF does), see `vision_layers_needed`.
    causal_mode:        "dense" (matches FlopCounterMode) or "causal" (unmasked pairs only).
    lm_head_tokens:     positions whose logits are computed (1 under ``generate``).

    The LLM runs on n = n_text + n_visual tokens in every layer. Methods that change the sequence per
    layer (VISOR, FastV) should sum `llm_layer_flops` themselves.
    """
    n_text = check_count("n_text", n_text)
    n_visual = check_count("n_visual", n_visual, allow_zero=True)
    n_crops = check_count("n_crops", n_crops, allow_zero=True)
    _check_mode(causal_mode)
    if n_projector_tokens is None:
        n_projector_tokens = n_crops * shape.projector_tokens_per_crop
    else:
        n_projector_tokens = check_count("n_projector_tokens", n_projector_tokens, allow_zero=True)

    vision = vision_encoder_flops(shape.vision, n_crops, vision_layers) if n_crops else FlopTerms()
    projector = projector_flops(shape.projector, n_projector_tokens) if n_projector_tokens else FlopTerms()
    n = n_text + n_visual
    return ModelFlops(
        vision_encoder=vision,
        projector=projector,
        llm=llm_flops(shape.llm, n, n, causal_mode),
        lm_head=lm_head_flops(shape.llm, lm_head_tokens),
    )

