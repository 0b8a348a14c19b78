"""Per-sample FLOP accounting: what one sample actually cost, term by term, from its own token counts.

Every evaluated sample gets a record of the form (keys of `SampleFlops.as_record`)::

    flops_vision            vision tower on every encoded crop (all layers: what HF runs; downsample encodes fewer)
    flops_projector         multi_modal_projector on every encoded crop's tokens (before un-padding / dropping), plus
                            the tokens a method projects once more (VisionZip's merged contextual tokens)
    flops_selection         a method's work outside the host's modules (HiRED's and VisionZip's attention scores,
                            VisionZip's key comparisons; 0 for other methods)
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

Methods own their cost: the accountant charges the host model's forward on the sample's own tokens (its roles and
visual tokens per layer included) and adds what each method reports of its own work (`MethodCost.overhead_flops`,
from the method's `flop_cost(model)`: its selection, merging, ranking, added modules); it names no method.

Typical use::

    accountant = FlopAccountant.for_model(model, reducer)          # + VISOR's VisorModel, or FastV's FastVConfig
    tokens = SampleTokens.from_record(record, max_new_tokens=16)   # a SampleRecord / VisorSampleRecord
    accountant.record(tokens)                                       # the flat dict above
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from visor_model.efficiency.flops import (
    CAUSAL_MODES,
    FlopTerms,
    cross_attention_flops,
    depthwise_conv1d_flops,
    fastv_layer_macs,
    llm_layer_flops,
    lm_head_flops,
    mlp_flops,
    projector_flops,
    vision_encoder_flops,
)
from visor_model.efficiency.shapes import LlavaShape, LLMShape
from visor_model.efficiency.shapes import check_count as _count

__all__ = [
    "CA",
    "SA",
    "TEXT",
    "FlopAccountant",
    "MethodCost",
    "Overhead",
    "SampleFlops",
    "SampleTokens",
    "cross_attention_decode_flops",
    "fastv_prefill_macs",
    "llm_decode_flops",
    "llm_prefill_flops",
    "positional_conv_flops",
    "produced_tokens",
    "routing_token_flops",
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
                  after it); None = n_visual in every SA layer. Its ranking is FastV's own cost (`rank_flops`).
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
    total = total + positional_conv_flops(shape, n_visual, roles, conv_kernel)
    if router_layer is not None:
        total = total + routing_token_flops(shape, n_text, n_visual, roles, router_layer, router_sizes, causal_mode)
    return total


def positional_conv_flops(shape: LLMShape, n_visual: int, roles: Sequence[str] | None, kernel: int) -> FlopTerms:
    """A depth-wise conv of `kernel` on the visual tokens, run once before the first CA layer (VISOR's positional
    conv), as ``conv.*`` terms; none without a CA layer, a visual token or a kernel."""
    roles = _roles(roles, shape.n_layers)
    if not (kernel and CA in roles and n_visual):
        return FlopTerms()
    return depthwise_conv1d_flops(shape.hidden, n_visual, kernel).prefixed("conv.")


def routing_token_flops(shape: LLMShape, n_text: int, n_visual: int, roles: Sequence[str] | None, router_layer: int,
                        router_sizes: Sequence[int] | None, causal_mode: str = "causal") -> FlopTerms:
    """A policy's extra prefill work, as ``router.*`` terms: the routing token is one more text token in layers
    [0, router_layer) (and one more CA query there), then the router MLP of widths ``router_sizes`` [d, hidden, n]
    runs on it."""
    roles = _roles(roles, shape.n_layers)
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
    return (extra + mlp_flops(list(router_sizes), 1)).prefixed("router.")


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


# ----------------------------------------------------------------------------------------------------------
# what a method adds


# SampleTokens fields that only a method's cost can charge: a sample that carries one needs an accountant with that
# method (one whose cost lists the field in `sample_fields`), or the charge would be silently missing
METHOD_FIELDS = ("routed", "visual_per_layer")


@dataclass(frozen=True)
class Overhead:
    """FLOPs a method adds to the host model's forward on the tokens it kept, for one sample:

    selection:        work outside the host's modules (e.g. attention scores, key comparisons): flops_selection
    projector_tokens: tokens the projector runs on beyond every encoded crop's (e.g. re-projected merged tokens)
    prefill:          work inside the LLM prefill, each term prefixed by its part, one of PREFILL_PARTS
                      (flops_llm_prefill_<part>; e.g. "rank." a ranking, "conv." / "router." added modules)
    """

    selection: FlopTerms = field(default_factory=FlopTerms)
    projector_tokens: int = 0
    prefill: FlopTerms = field(default_factory=FlopTerms)

    def __add__(self, other: Overhead) -> Overhead:
        return Overhead(self.selection + other.selection, self.projector_tokens + other.projector_tokens,
                        self.prefill + other.prefill)


class MethodCost:
    """A method's own cost, as the accountant asks for it: what its `flop_cost(model)` returns (a `TokenReducer`'s
    default is this class: nothing added). A method with work of its own overrides `overhead_flops`, and lists in
    `sample_fields` the METHOD_FIELDS of SampleTokens that its samples carry and it reads."""

    sample_fields: tuple[str, ...] = ()

    def overhead_flops(self, shape: LlavaShape, tokens: SampleTokens, causal_mode: str = "causal") -> Overhead:
        """What the method adds to the host model's cost of `tokens` (see `Overhead`)."""
        return Overhead()


@dataclass(frozen=True)
class FlopAccountant:
    """Everything about a model + method that fixes the cost of a sample, given its `SampleTokens`.

    shape: the LLaVA model's sizes
    costs: the methods' own costs (`MethodCost`), summed on top of the host model's forward on the sample's tokens
    """

    shape: LlavaShape
    costs: tuple[MethodCost, ...] = ()

    @classmethod
    def for_model(cls, model, *methods) -> FlopAccountant:
        """From a loaded LLaVA model and what ran on it (a `TokenReducer`, VISOR's model, FastV's config, ...; None
        is skipped): each one's `flop_cost(model)`."""
        return cls(LlavaShape.from_config(model.config),
                   tuple(method.flop_cost(model) for method in methods if method is not None))

    def sample(self, tokens: SampleTokens, causal_mode: str = "causal") -> SampleFlops:
        llm = self.shape.llm
        roles = tokens.roles
        if roles is not None and len(roles) != llm.n_layers:
            raise ValueError(f"{len(roles)} roles for an LLM of {llm.n_layers} layers")
        taken = {name for cost in self.costs for name in cost.sample_fields}
        for name in METHOD_FIELDS:
            if getattr(tokens, name) and name not in taken:
                raise ValueError(f"the sample carries {name}, but none of this accountant's methods takes it (build "
                                 "it with the method that ran: FlopAccountant.for_model)")
        per_layer = tokens.visual_per_layer
        prefill = llm_prefill_flops(llm, tokens.n_text, tokens.n_visual, causal_mode, roles,
                                    visual_per_layer=per_layer)
        overhead = sum((cost.overhead_flops(self.shape, tokens, causal_mode) for cost in self.costs), Overhead())
        for key in overhead.prefill:
            if key.split(".")[0] not in PREFILL_PARTS:
                raise ValueError(f"a method's prefill overhead term {key!r} is in no part of PREFILL_PARTS "
                                 f"({', '.join(PREFILL_PARTS)}): its record column would be missing")
        n_proj = tokens.n_crops * self.shape.projector_tokens_per_crop + overhead.projector_tokens
        return SampleFlops(
            vision=vision_encoder_flops(self.shape.vision, tokens.n_crops) if tokens.n_crops else FlopTerms(),
            projector=projector_flops(self.shape.projector, n_proj) if n_proj else FlopTerms(),
            selection=overhead.selection,
            llm_prefill=prefill + overhead.prefill,
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
