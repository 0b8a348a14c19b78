"""Per-sample FLOP accounting: what one sample actually cost, term by term, from its own token counts.

Every evaluated sample gets a record of the form (keys of `SampleFlops.as_record`)::

    flops_vision            vision tower on every encoded crop (all layers: what HF runs; downsample encodes fewer)
    flops_projector         multi_modal_projector on every encoded crop's tokens (before un-padding / dropping), plus
                            VisionZip's merged contextual tokens, which it projects once more
    flops_selection         method overhead outside the LLM: HiRED's and VisionZip's attention scores and
                            VisionZip's key comparisons (0 for other methods)
    flops_llm_prefill       LLM prefill, **causal** (the headline; the papers' quantity)
      flops_llm_prefill_sa      layers that see text + visual tokens (every layer for non-VISOR methods)
      flops_llm_prefill_text    VISOR text-only layers and the host layer of every CA layer
      flops_llm_prefill_ca      VISOR cross-attention blocks
      flops_llm_prefill_conv    VISOR positional depth-wise conv
      flops_llm_prefill_router  VISOR policy: the routing token through the layers before the router + its MLP
      flops_llm_prefill_rank    FastV: layer K-1's attention probabilities recomputed to rank the visual tokens
    flops_llm_prefill_dense the same prefill with every (query, key) pair counted (= FlopCounterMode's count)
    flops_llm_decode        one step per generated token after the first, with the growing KV cache
    flops_lm_head           LM head on every position whose logits are needed (one per produced token)
    flops_total             vision + projector + selection + llm_prefill + llm_decode + lm_head (causal)
    fastv_macs              FastV's convention: sum over layers of fastv_layer_macs (MACs, not FLOPs),
                            LLM prefill only, each layer at its own length; VISOR CA blocks in the same
                            convention (see `fastv_prefill_macs`)
    layers_sa / layers_ca / layers_text   how many LLM layers ran in each role for this sample

Conventions (those of `visor_model.efficiency.flops`, which supplies every per-module formula)
-----------------------------------------------------------------------------------
* FLOPs = 2 x multiply-accumulates; only matmul-class work (linear, attention products, convolutions).
  Elementwise work (norms, activations, softmax, RoPE, residuals, VISOR's tanh gate) is not counted,
  exactly as `torch.utils.flop_counter.FlopCounterMode` leaves it out.
* A sample's cost is its cost **alone (batch size 1)**: padding added by batching is not charged, and
  generation stops when *this* sample stops. ``produced`` = tokens whose logits were computed: the
  generated tokens plus the end-of-sequence token when the sample stopped on it; a sample that stopped on a
  stop string or at max_new_tokens produced exactly its generated tokens (`produced_tokens`). Decode steps =
  produced - 1 (the first token comes from the prefill); the runners run exactly these steps.
* Causal vs dense (the reconciliation, tested exactly in tests/test_accounting.py): they differ only in
  the attention score/value products of self-attention at prefill. For every self-attention that sees n
  new tokens at prefill (an SA layer: n = text + visual; a text-only or CA host layer: n = text; the
  routing token adds one to n in the layers before the router; FastV: n of the layer's own sequence, the pruned
  one from layer K on), dense counts n^2 pairs and causal n (n + 1) / 2, so dense - causal =
  4 * heads * head_dim * n (n - 1) / 2 per layer. FastV's ranking with score "mean" adds n (n - 1) / 2 masked
  pairs of its score product (one term: 2 * heads * head_dim per pair); with "last" it has none. Cross-attention
  (unmasked), the vision tower (bidirectional) and decode steps (a new token sees the whole cache) are
  identical in both modes.
* The decode cost of k tokens after a prompt of n0 tokens, one token at a time with a KV cache, is exactly
  ``llm_layer_flops(shape, k, n0 + k, "causal")`` (k queries, k * n0 + k (k + 1) / 2 visible pairs), so it
  is computed in closed form. VISOR: SA layers' context holds text + visual tokens; text-only and CA host
  layers' context holds the text only; each CA block re-uses the visual K/V cached at prefill (q / o
  projections and attention over the visual tokens per step, no K/V projections). FastV: layer l's context holds
  the text and the visual tokens it saw at prefill (`visual_per_layer[l]`: all of them before layer K, the kept
  ones from layer K on).

Typical use::

    accountant = FlopAccountant.for_model(model, reducer)          # or visor=VisorModel, or fastv=FastVConfig
    tokens = SampleTokens.from_record(record, max_new_tokens=16)   # a SampleRecord / VisorSampleRecord
    accountant.record(tokens)                                       # the flat dict above
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from visor_model.efficiency.flops import (
    CAUSAL_MODES,
    FlopTerms,
    attention_pairs,
    cross_attention_flops,
    depthwise_conv1d_flops,
    fastv_layer_macs,
    llm_layer_flops,
    lm_head_flops,
    mlp_flops,
    projector_flops,
    vision_encoder_flops,
)
from visor_model.efficiency.shapes import LlavaShape, LLMShape, VisionShape
from visor_model.efficiency.shapes import check_count as _count

__all__ = [
    "CA",
    "SA",
    "TEXT",
    "FlopAccountant",
    "SampleFlops",
    "SampleTokens",
    "cross_attention_decode_flops",
    "fastv_prefill_macs",
    "fastv_rank_flops",
    "hired_selection_flops",
    "visionzip_merge_flops",
    "llm_decode_flops",
    "llm_prefill_flops",
    "produced_tokens",
    "visor_prefill_flops",
]

SA, CA, TEXT = "sa", "ca", "text"  # the layer roles of visor_model.methods.visor.modeling (same strings)
ROLES = (SA, CA, TEXT)
PREFILL_PARTS = ("sa", "text", "ca", "conv", "router", "rank")


# ----------------------------------------------------------------------------------------------------------
# LLM terms by layer role


def _roles(roles: Sequence[str] | None, n_layers: int) -> tuple[str, ...]:
    if roles is None:
        return (SA,) * n_layers
    roles = tuple(roles)
    if len(roles) != n_layers or any(r not in ROLES for r in roles):
        raise ValueError(f"roles must be {n_layers} of {ROLES}, got {roles}")
    return roles


def _visual_per_layer(visual_per_layer: Sequence[int] | None, n_visual: int, roles: tuple[str, ...]
                      ) -> tuple[int, ...] | None:
    """FastV's per-layer visual-token counts, checked: one per layer, each at most n_visual, host layers only."""
    if visual_per_layer is None:
        return None
    counts = tuple(_count(f"visual_per_layer[{i}]", v, allow_zero=True) for i, v in enumerate(visual_per_layer))
    if len(counts) != len(roles) or any(v > n_visual for v in counts):
        raise ValueError(f"visual_per_layer must give {len(roles)} counts of at most n_visual ({n_visual}), "
                         f"got {counts}")
    if any(role != SA for role in roles):
        raise ValueError("visual_per_layer (FastV) is for the host model's layers, not VISOR roles")
    return counts


def _per_layer(shape: LLMShape, n_text: int, visual_per_layer: tuple[int, ...], causal_mode: str,
               steps: int | None = None) -> FlopTerms:
    """`llm_layer_flops` summed over layers of n_l = n_text + visual_per_layer[l] prompt tokens: their prefill
    (steps None), or `steps` decode steps after it."""
    total = FlopTerms()
    for n_visual in dict.fromkeys(visual_per_layer):  # each distinct length once, in layer order
        n = n_text + n_visual
        # decode: `steps` queries one at a time over a growing cache, the causal pairs (see the module docstring)
        layer = (llm_layer_flops(shape, n, n, causal_mode) if steps is None
                 else llm_layer_flops(shape, steps, n + steps, "causal"))
        total = total + layer * visual_per_layer.count(n_visual)
    return total


def llm_prefill_flops(
    shape: LLMShape,
    n_text: int,
    n_visual: int,
    causal_mode: str = "causal",
    roles: Sequence[str] | None = None,
    conv_kernel: int = 0,
    router_layer: int | None = None,
    router_sizes: Sequence[int] | None = None,
    visual_per_layer: Sequence[int] | None = None,
) -> FlopTerms:
    """LLM prefill FLOPs of one sample (LM head excluded), terms prefixed by part:
    ``sa.*`` layers on text + visual tokens, ``text.*`` text-only layers and CA host layers, ``ca.*`` the
    added cross-attention blocks, ``conv.*`` the positional conv, ``router.*`` the policy's extra work.

    roles:        per-layer "sa" | "ca" | "text" (VISOR); None = every layer "sa" (the host model).
    visual_per_layer: FastV: the visual tokens in each layer's sequence (all n_visual up to layer K, the kept ones
                  after it); None = n_visual in every SA layer. FastV's ranking is `fastv_rank_flops`.
    conv_kernel:  VISOR's depth-wise conv on the visual tokens (run once, before the first CA layer); 0 = none.
    router_layer: with a policy, the routing token is one more text token in layers [0, router_layer)
                  (and one more CA query there); ``router_sizes`` = the router MLP's widths [d, hidden, n].
    """
    n_text = _count("n_text", n_text)
    n_visual = _count("n_visual", n_visual, allow_zero=True)
    if causal_mode not in CAUSAL_MODES:
        raise ValueError(f"causal_mode must be one of {CAUSAL_MODES}, got {causal_mode!r}")
    roles = _roles(roles, shape.n_layers)
    per_layer = _visual_per_layer(visual_per_layer, n_visual, roles)
    n_all = n_text + n_visual
    total = FlopTerms()
    n_sa = roles.count(SA)
    n_host_text = len(roles) - n_sa
    if per_layer is not None:
        total = _per_layer(shape, n_text, per_layer, causal_mode).prefixed("sa.")
    elif n_sa:
        total = total + (llm_layer_flops(shape, n_all, n_all, causal_mode) * n_sa).prefixed("sa.")
    if n_host_text:
        total = total + (llm_layer_flops(shape, n_text, n_text, causal_mode) * n_host_text).prefixed("text.")
    n_ca = roles.count(CA)
    if n_ca and n_visual:
        total = total + (cross_attention_flops(shape, n_text, n_visual, with_gate=False) * n_ca).prefixed("ca.")
    if conv_kernel and n_ca and n_visual:
        total = total + depthwise_conv1d_flops(shape.hidden, n_visual, conv_kernel).prefixed("conv.")
    if router_layer is not None:
        if not router_sizes:
            raise ValueError("router_layer needs router_sizes (the router MLP's widths)")
        if any(roles[layer] == SA for layer in range(router_layer)):
            raise ValueError("the router must sit before the first SA layer")
        # the routing token is one more text token in every layer before the router (and one more CA query
        # there; the visual K/V are projected once either way): its cost is the difference, exact in both modes
        extra = _minus(llm_layer_flops(shape, n_text + 1, n_text + 1, causal_mode) * router_layer,
                       llm_layer_flops(shape, n_text, n_text, causal_mode) * router_layer)
        n_ca_before = sum(role == CA for role in roles[:router_layer])
        if n_ca_before and n_visual:
            extra = extra + _cross_queries(shape, 1, n_visual) * n_ca_before
        total = total + (extra + mlp_flops(list(router_sizes), 1)).prefixed("router.")
    return total


def _minus(a: FlopTerms, b: FlopTerms) -> FlopTerms:
    out = a.as_dict()
    for k, v in b.items():
        out[k] = out.get(k, 0) - v
        if out[k] < 0:
            raise AssertionError(f"negative FLOP term {k}")
    return FlopTerms.of(out)


def _cross_queries(shape: LLMShape, n_queries: int, n_visual: int) -> FlopTerms:
    """A CA block for `n_queries` more queries whose visual K/V exist already (no K/V projections)."""
    terms = cross_attention_flops(shape, n_queries, n_visual, with_gate=False).as_dict()
    terms["k_proj"] = terms["v_proj"] = 0
    return FlopTerms.of(terms)


def cross_attention_decode_flops(shape: LLMShape, steps: int, n_visual: int) -> FlopTerms:
    """A CA block over `steps` decode steps: per step one query, visual K/V from the prefill cache."""
    return _cross_queries(shape, steps, n_visual)


def llm_decode_flops(
    shape: LLMShape, n_text: int, n_visual: int, steps: int, roles: Sequence[str] | None = None,
    visual_per_layer: Sequence[int] | None = None,
) -> FlopTerms:
    """FLOPs of `steps` greedy decode steps after a prompt of n_text + n_visual tokens (LM head excluded).

    Step s (1-based) feeds one token; an SA layer attends n_text + n_visual + s keys (FastV: n_text +
    visual_per_layer[l] + s), a text-only / CA host layer n_text + s keys (visual tokens are not in its cache),
    a CA block attends the n_visual cached visual keys. Summed in closed form (see the module docstring).
    Causal = dense for decode steps. Terms prefixed ``sa.``, ``text.``, ``ca.`` like `llm_prefill_flops`.
    """
    n_text = _count("n_text", n_text)
    n_visual = _count("n_visual", n_visual, allow_zero=True)
    steps = _count("steps", steps, allow_zero=True)
    roles = _roles(roles, shape.n_layers)
    per_layer = _visual_per_layer(visual_per_layer, n_visual, roles)
    if not steps:
        return FlopTerms()
    total = FlopTerms()
    n_sa = roles.count(SA)
    n_host_text = len(roles) - n_sa
    if per_layer is not None:
        total = _per_layer(shape, n_text, per_layer, "causal", steps).prefixed("sa.")
    elif n_sa:
        total = total + (llm_layer_flops(shape, steps, n_text + n_visual + steps, "causal") * n_sa).prefixed("sa.")
    if n_host_text:
        total = total + (llm_layer_flops(shape, steps, n_text + steps, "causal") * n_host_text).prefixed("text.")
    n_ca = roles.count(CA)
    if n_ca and n_visual:
        total = total + (cross_attention_decode_flops(shape, steps, n_visual) * n_ca).prefixed("ca.")
    return total


def fastv_prefill_macs(shape: LLMShape, n_text: int, n_visual: int, roles: Sequence[str] | None = None,
                       visual_per_layer: Sequence[int] | None = None) -> int:
    """FastV's convention (MACs, LLM prefill only): ``fastv_layer_macs(n_l, d, m)`` summed over layers, with
    n_l the tokens layer l sees (text + visual for SA layers, text for the others; FastV: text +
    visual_per_layer[l], the paper's K C(n) + (L - K) C(n'), without its ranking). VISOR's CA blocks in
    the same convention (q/o on the text, k/v on the visual tokens as d x d, all pairs):
    ``2 n_t d^2 + 2 n_v d^2 + 2 n_t n_v d`` each. For the host model this is
    ``n_layers * fastv_layer_macs(n_text + n_visual, d, m)``, the number token-pruning papers quote."""
    roles = _roles(roles, shape.n_layers)
    per_layer = _visual_per_layer(visual_per_layer, n_visual, roles) or (n_visual,) * len(roles)
    d, m = shape.hidden, shape.intermediate
    macs = 0
    for role, visual in zip(roles, per_layer):
        macs += fastv_layer_macs(n_text + visual if role == SA else n_text, d, m)
        if role == CA and n_visual:
            macs += 2 * n_text * d * d + 2 * n_visual * d * d + 2 * n_text * n_visual * d
    return macs


def visor_prefill_flops(shape: LLMShape, config, active, n_visual: int, n_text: int, causal_mode: str = "causal",
                        router: bool = False, n_viable: int = 1) -> FlopTerms:
    """`visor_model.methods.visor.modeling.prefill_flops`'s signature on top of `llm_prefill_flops` (so there is one
    implementation): a `VisorConfig` and an active configuration instead of explicit roles."""
    router_layer = config.router_layer if router else None
    return llm_prefill_flops(
        shape, n_text, n_visual, causal_mode, roles=config.roles(active), conv_kernel=config.conv_kernel,
        router_layer=router_layer,
        router_sizes=(shape.hidden, config.router_hidden, n_viable) if router_layer is not None else None,
    )


FASTV_SCORES = ("last", "mean")  # FastV's ranking scores (visor_model.methods.fastv)


def fastv_rank_flops(shape: LLMShape, n_tokens: int, score: str, causal_mode: str = "causal") -> FlopTerms:
    """FastV's ranking (`visor_model.methods.fastv.FastV.attention_scores`): layer K-1's q and k recomputed from its
    input of n tokens, then the scores q k^T of Q queries (Q = 1 for score "last", n for "mean"); the softmax and
    the sums are elementwise (not counted). The layer's own attention runs as usual beside it.

        q_proj       2 * Q * d * (h * hd)
        k_proj       2 * n * d * (kv * hd)
        attn_scores  2 * P * h * hd          P = n ("last"); "mean": n^2 (dense), n (n + 1) / 2 (causal)
    """
    n = _count("n_tokens", n_tokens)
    if score not in FASTV_SCORES:
        raise ValueError(f"score must be one of {', '.join(FASTV_SCORES)}, got {score!r}")
    queries = 1 if score == "last" else n
    return FlopTerms.of({
        "q_proj": 2 * queries * shape.hidden * shape.q_dim,
        "k_proj": 2 * n * shape.hidden * shape.kv_dim,
        "attn_scores": 2 * attention_pairs(queries, n, causal_mode) * shape.n_heads * shape.head_dim,
    })


# ----------------------------------------------------------------------------------------------------------
# method overhead outside the LLM


def hired_selection_flops(vshape: VisionShape, n_crops: int, score: str, n_images: int = 1) -> FlopTerms:
    """HiRED's attention scores (`visor_model.methods.hired.attention_scores`), which recompute q and k of two
    encoder layers from their input hidden states: the distribution layer on each image's full-image crop
    (n_images crops) and the selection layer on all n_crops crops (VisionZip: its one scoring layer on all
    crops, n_images = 0). Per crop of seq tokens (P patches):

        q_proj, k_proj   2 * seq * d * d each
        scores           "cls": 2 * seq * d (one query row);  "mean_received": 2 * P * seq * d
    """
    n_crops = _count("n_crops", n_crops, allow_zero=True)
    n_images = _count("n_images", n_images, allow_zero=True)
    if score not in ("cls", "mean_received"):
        raise ValueError(f"score must be 'cls' or 'mean_received', got {score!r}")
    d, seq = vshape.hidden, vshape.tokens_per_crop
    queries = 1 if score == "cls" else vshape.n_patches
    crops = n_crops + n_images
    return FlopTerms.of({
        "q_proj": 2 * seq * d * d * crops,
        "k_proj": 2 * seq * d * d * crops,
        "scores": 2 * queries * seq * d * crops,
    })


def visionzip_merge_flops(vshape: VisionShape, pairs: int) -> FlopTerms:
    """VisionZip's contextual merge (`visor_model.methods.visionzip`): `pairs` (merged token, target) cosine
    similarities of head-averaged keys, one d_h-dim dot product each, as one matmul per crop. The head average,
    the normalisation and the averaging of the merged vectors are elementwise (not counted); the attention
    scores are `hired_selection_flops` on the feature layer (n_images = 0), the re-projection of the contextual
    tokens the projector term."""
    pairs = _count("pairs", pairs, allow_zero=True)
    return FlopTerms.of({"similarity": 2 * pairs * (vshape.hidden // vshape.n_heads)})


# ----------------------------------------------------------------------------------------------------------
# one sample


FINISH_REASONS = ("eos", "stop", "length")  # visor_model.llava.generation: eos token, stop string, token limit


def produced_tokens(generated_tokens: int, max_new_tokens: int, finish_reason: str) -> int:
    """Tokens whose logits a sample needed: its generated tokens, plus the end-of-sequence token when it
    stopped on one (the runners exclude eos from the generated ids; a stop string's token is included)."""
    generated_tokens = _count("generated_tokens", generated_tokens, allow_zero=True)
    max_new_tokens = _count("max_new_tokens", max_new_tokens)
    if finish_reason not in FINISH_REASONS:
        raise ValueError(f"finish_reason must be one of {', '.join(FINISH_REASONS)}, got {finish_reason!r}")
    if generated_tokens > max_new_tokens:
        raise ValueError(f"generated_tokens ({generated_tokens}) exceeds max_new_tokens ({max_new_tokens})")
    if finish_reason == "eos":
        if generated_tokens == max_new_tokens:
            raise ValueError(f"a sample at max_new_tokens ({max_new_tokens}) cannot have stopped on eos")
        return generated_tokens + 1
    if generated_tokens == 0:
        raise ValueError(f"a sample that stopped on {finish_reason!r} generated at least one token")
    if finish_reason == "length" and generated_tokens != max_new_tokens:
        raise ValueError(f"a sample stopped by length generates max_new_tokens ({max_new_tokens}), "
                         f"got {generated_tokens}")
    return generated_tokens


@dataclass(frozen=True)
class SampleTokens:
    """The token counts that determine one sample's cost.

    n_text:      text tokens of the LLM prompt (the `<image>` placeholder excluded)
    n_visual:    visual tokens entering the LLM (after un-padding, newlines, OV downscaling, dropping)
    n_crops:     crops through the vision tower (0: no image)
    produced:    tokens whose logits were computed (>= 1; see `produced_tokens`)
    roles:       VISOR's per-layer roles for this sample; None = every layer SA (the host model)
    routed:      the VISOR policy ran (routing token + router)
    visual_per_layer: FastV's visual tokens in each LLM layer's sequence; None = n_visual in every layer
    decode_steps: default produced - 1; set it to charge a loop that runs more steps (tests)
    crop_patches: patch tokens of each encoded crop present after packing (VisionZip's merge work depends on it)
    """

    n_text: int
    n_visual: int
    n_crops: int
    produced: int = 1
    roles: tuple[str, ...] | None = None
    routed: bool = False
    decode_steps: int | None = None
    visual_per_layer: tuple[int, ...] | None = None
    crop_patches: tuple[int, ...] | None = None

    def __post_init__(self):
        _count("n_text", self.n_text)
        _count("n_visual", self.n_visual, allow_zero=True)
        _count("n_crops", self.n_crops, allow_zero=True)
        _count("produced", self.produced)
        if self.roles is not None:
            object.__setattr__(self, "roles", tuple(self.roles))
        if self.visual_per_layer is not None:
            object.__setattr__(self, "visual_per_layer", tuple(self.visual_per_layer))
        if self.crop_patches is not None:
            object.__setattr__(self, "crop_patches", tuple(_count("crop_patches", p, allow_zero=True)
                                                           for p in self.crop_patches))
            if len(self.crop_patches) != self.n_crops:
                raise ValueError(f"crop_patches has {len(self.crop_patches)} entries for {self.n_crops} crops")
        if self.decode_steps is None:
            object.__setattr__(self, "decode_steps", self.produced - 1)
        _count("decode_steps", self.decode_steps, allow_zero=True)

    @classmethod
    def from_record(cls, record, max_new_tokens: int) -> SampleTokens:
        """From a `visor_model.llava.runner.SampleRecord` (or a VISOR record, which carries roles and the LLM's
        visual / text token counts, or a FastV record, which carries its visual tokens per layer) and the
        generation limit the sample ran under."""
        if getattr(record, "roles", None):
            n_visual, n_text = record.llm_visual_tokens, record.llm_text_tokens
            roles = tuple(record.roles)
        else:
            n_visual = record.visual_tokens_kept + record.newline_tokens_kept
            n_text = record.prompt_tokens - n_visual
            roles = None
        return cls(
            n_text=n_text,
            n_visual=n_visual,
            n_crops=record.crops,
            produced=produced_tokens(record.generated_tokens, max_new_tokens, record.finish_reason),
            roles=roles,
            routed=getattr(record, "router_probabilities", None) is not None,
            visual_per_layer=getattr(record, "visual_per_layer", None) or None,
            crop_patches=getattr(record, "crop_patches", None),
        )


@dataclass(frozen=True)
class SampleFlops:
    """One sample's FLOPs by term (each a `FlopTerms` with its sub-terms) and FastV's figure in MACs."""

    vision: FlopTerms = field(default_factory=FlopTerms)
    projector: FlopTerms = field(default_factory=FlopTerms)
    selection: FlopTerms = field(default_factory=FlopTerms)
    llm_prefill: FlopTerms = field(default_factory=FlopTerms)
    llm_decode: FlopTerms = field(default_factory=FlopTerms)
    lm_head: FlopTerms = field(default_factory=FlopTerms)
    fastv_macs: int = 0
    causal_mode: str = "causal"

    @property
    def total(self) -> int:
        return sum(t.total for t in (self.vision, self.projector, self.selection, self.llm_prefill,
                                     self.llm_decode, self.lm_head))

    def part(self, name: str) -> int:
        """llm_prefill restricted to one part: "sa", "text", "ca", "conv" or "router"."""
        return sum(v for k, v in self.llm_prefill.items() if k.startswith(name + "."))

    def as_record(self) -> dict[str, int]:
        record = {
            "flops_vision": self.vision.total,
            "flops_projector": self.projector.total,
            "flops_selection": self.selection.total,
            "flops_llm_prefill": self.llm_prefill.total,
            **{f"flops_llm_prefill_{p}": self.part(p) for p in PREFILL_PARTS},
            "flops_llm_decode": self.llm_decode.total,
            "flops_lm_head": self.lm_head.total,
            "flops_total": self.total,
            "fastv_macs": self.fastv_macs,
        }
        return record


@dataclass(frozen=True)
class FlopAccountant:
    """Everything about a model + method that fixes the cost of a sample, given its `SampleTokens`.

    shape:           the LLaVA model's sizes
    selection_score: HiRED's or VisionZip's score ("cls" | "mean_received") when one runs, else None
    conv_kernel:     VISOR's positional conv kernel (0: none)
    router_layer / router_sizes: VISOR's policy (used for samples with ``routed=True``)
    fastv_k / fastv_score: FastV's K and score when FastV runs (its ranking at layer K-1; every sample then
                     needs `visual_per_layer`)
    merge:           VisionZip's (budget, dominant_ratio): it scores one layer (not HiRED's two) and merges
    """

    shape: LlavaShape
    selection_score: str | None = None
    conv_kernel: int = 0
    router_layer: int | None = None
    router_sizes: tuple[int, ...] | None = None
    fastv_k: int | None = None
    fastv_score: str | None = None
    merge: tuple[float, float] | None = None

    @classmethod
    def for_model(cls, model, reducer=None, visor=None, fastv=None) -> FlopAccountant:
        """From a loaded LLaVA model, its `TokenReducer` (HiRED and VisionZip add their scoring and merging
        cost), for VISOR the `VisorModel` (positional conv; router widths when it has a trained router), for FastV
        its `FastVConfig` (K and score)."""
        from visor_model.methods.hired import HiRED
        from visor_model.methods.visionzip import VisionZip

        shape = LlavaShape.from_config(model.config)
        score, merge = None, None
        if isinstance(reducer, (HiRED, VisionZip)):
            score = reducer.resolved(model).score
        if isinstance(reducer, VisionZip):
            merge = (reducer.config.budget, reducer.config.dominant_ratio)
        conv, router_layer, router_sizes = 0, None, None
        if visor is not None:
            conv = visor.config.conv_kernel if visor.config.ca_layers else 0
            router = getattr(visor.visor, "router", None)
            if router is not None and visor.config.router_layer is not None:
                router_layer = visor.config.router_layer
                router_sizes = (router[0].in_features, router[0].out_features, router[-1].out_features)
        return cls(shape, score, conv, router_layer, router_sizes, fastv.k if fastv is not None else None,
                   fastv.score if fastv is not None else None, merge)

    def sample(self, tokens: SampleTokens, causal_mode: str = "causal") -> SampleFlops:
        llm = self.shape.llm
        roles = tokens.roles
        if roles is not None and len(roles) != llm.n_layers:
            raise ValueError(f"{len(roles)} roles for an LLM of {llm.n_layers} layers")
        if tokens.routed and self.router_layer is None:
            raise ValueError("the sample was routed but this accountant has no router")
        per_layer = tokens.visual_per_layer
        if (self.fastv_k is not None) != (per_layer is not None):
            raise ValueError("a FastV accountant needs samples with visual_per_layer, and only it takes them")
        prefill = llm_prefill_flops(
            llm, tokens.n_text, tokens.n_visual, causal_mode, roles, self.conv_kernel if roles else 0,
            self.router_layer if tokens.routed else None, self.router_sizes if tokens.routed else None, per_layer)
        if self.fastv_k is not None:
            n_ranked = tokens.n_text + per_layer[self.fastv_k - 1]
            prefill = prefill + fastv_rank_flops(llm, n_ranked, self.fastv_score, causal_mode).prefixed("rank.")
        n_proj = tokens.n_crops * self.shape.projector_tokens_per_crop
        selection = FlopTerms()
        if self.selection_score and tokens.n_crops:
            selection = hired_selection_flops(self.shape.vision, tokens.n_crops, self.selection_score,
                                              n_images=0 if self.merge else 1)
        if self.merge:
            if tokens.crop_patches is None:
                raise ValueError("VisionZip's merge FLOPs need the sample's crop_patches (SampleTokens.from_record)")
            from visor_model.methods.visionzip import merge_work

            pairs, reprojected = merge_work(tokens.crop_patches, *self.merge)
            selection = selection + visionzip_merge_flops(self.shape.vision, pairs).prefixed("merge.")
            n_proj += reprojected
        return SampleFlops(
            vision=vision_encoder_flops(self.shape.vision, tokens.n_crops) if tokens.n_crops else FlopTerms(),
            projector=projector_flops(self.shape.projector, n_proj) if n_proj else FlopTerms(),
            selection=selection,
            llm_prefill=prefill,
            llm_decode=llm_decode_flops(llm, tokens.n_text, tokens.n_visual, tokens.decode_steps, roles, per_layer),
            lm_head=lm_head_flops(llm, tokens.produced),
            fastv_macs=fastv_prefill_macs(llm, tokens.n_text, tokens.n_visual, roles, per_layer),
            causal_mode=causal_mode,
        )

    def record(self, tokens: SampleTokens) -> dict[str, int]:
        """The per-sample log entry: causal terms (headline), the dense LLM prefill (FlopCounterMode's
        convention) and the layer counts per role."""
        roles = tokens.roles or (SA,) * self.shape.llm.n_layers
        dense = self.sample(tokens, "dense").llm_prefill.total
        return {
            **self.sample(tokens, "causal").as_record(),
            "flops_llm_prefill_dense": dense,
            "layers_sa": roles.count(SA),
            "layers_ca": roles.count(CA),
            "layers_text": roles.count(TEXT),
        }
