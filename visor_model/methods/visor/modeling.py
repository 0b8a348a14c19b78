"""VISOR (VISion On Request, arXiv 2603.23495) on a LLaVA-NeXT / LLaVA-OneVision host: architecture + generation.

Every LLM layer l has one role for a given configuration (the set of SA candidate layers that run):

    "sa"   (V, T) <- TL_l([V; T])       the host layer on the full spliced sequence; visual tokens are updated
    "ca"   T <- TL_l(T + tanh(g) * CrossAttn(T, V))   a NEW gated cross-attention block, then the host layer
                                                      on the text tokens only; V is not updated
    "text" T <- TL_l(T)                 the host layer on the text tokens only (visual tokens are absent from
                                        the tensors, not masked)

Visual tokens V start as the projector output and are changed only by SA layers that run (plus, once, the
conditional positional embedding before the first CA layer). Text tokens keep their original position ids
(as if the visual tokens were still in the sequence), so with every layer SA and no CA layer the computation
is literally the host model's: the same decoder-layer modules are called with the same masks, rotary
embeddings and tensors, and the logits are bit-identical (tests/test_visor.py).

Choices where the paper is silent are the named options of `VisorConfig` (visor_model.methods.visor.config, see
its docstring).

KV cache (`VisorModel.generate`): at prefill every SA layer caches K/V of the whole sequence (visual + text),
every text-only and CA host layer caches text K/V only, and every CA block caches the K/V of the visual
tokens it read; each decode step appends the new token's K/V to the self-attention caches and reuses the CA
visual K/V. Cached and uncached (full re-prefill per token) greedy answers are identical (tests).

Policy: a learned routing token is appended after the prompt (next position id, text) for the layers before
the first SA candidate only, its hidden state at that point feeds the router MLP (sigmoid per viable
configuration = P(configuration suffices)), and it is then removed from the activations and the KV caches.
Because it is the last token and attention is causal (CA blocks only read visual tokens), no other token
ever attends to it, so it cannot change the answer. At threshold tau the cheapest viable configuration with
probability >= tau runs (the largest viable one if none), so expected compute is non-decreasing in tau.
Rows that pick different configurations continue as separate sub-batches after the router.

Shapes: B batch, T spliced prompt length (left-padded), Tt text tokens (left-padded), Tv visual tokens
(right-padded), d hidden, h query heads, kv key/value heads, hd head dim, K cached keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visor_model.files import replace_folder_atomically
from visor_model.llava.generation import GreedyRows, StoppingCriteria
from visor_model.llava.visual import SplicedBatch
from visor_model.methods.visor.config import CA, SA, TEXT, VisorConfig, VisorCost, default_layers, spread  # noqa: F401

VISOR_WEIGHTS = "visor.safetensors"
VISOR_CONFIG = "visor_config.json"
# router loss -> how its logits become P(configuration suffices) (`VisorModel.route`)
ROUTER_OUTPUTS = {"bce": "sigmoid", "ce": "cumulative_softmax"}


# ----------------------------------------------------------------------------------------------------------
# new modules


def _rms_norm_like(host_norm: nn.Module, hidden: int) -> nn.Module:
    norm = type(host_norm)(hidden, eps=host_norm.variance_epsilon)
    norm.weight.data.copy_(host_norm.weight.data)
    return norm


def _torch_default_init(module: nn.Module, generator: torch.Generator) -> None:
    """What nn.Linear / nn.Conv1d's reset_parameters draw, from `generator` instead of the global RNG: weight
    kaiming-uniform(a=sqrt(5)), bias uniform(+-1/sqrt(fan_in)), in that order."""
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
    if module.bias is not None:
        fan_in = module.weight[0].numel()  # in_features (Linear), in_channels / groups * kernel (Conv1d)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def _linear(in_features: int, out_features: int, bias: bool, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with torch's default initialisation drawn from `generator` (the global RNG is not used)."""
    linear = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)
    _torch_default_init(linear, generator)
    return linear


def _rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2 :], x[..., : x.shape[-1] // 2]), dim=-1)


def _rope(x, cos, sin):
    """x [B, heads, n, hd], cos/sin [B, n, hd]."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class CrossAttention(nn.Module):
    """Gated cross-attention: text queries, visual keys/values, GQA shaped like the host layer.

        out = text + tanh(gate) * o_proj(softmax(q k^T / sqrt(hd)) v)
        q = q_proj(norm_text(text)),  k, v = k_proj / v_proj(norm_visual(visual))
    """

    def __init__(self, host_layer: nn.Module, text_config, config: VisorConfig, generator: torch.Generator):
        super().__init__()
        attn = host_layer.self_attn
        d = text_config.hidden_size
        self.n_heads = text_config.num_attention_heads
        self.n_kv_heads = getattr(text_config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = attn.head_dim
        self.rope = config.ca_rope
        # torch's default init is drawn (from `generator`) even where ca_init replaces it below: it is part of
        # the seeded stream that the later draws (ca_init "random", the routing token) continue
        self.q_proj = _linear(d, self.n_heads * self.head_dim, attn.q_proj.bias is not None, generator)
        self.k_proj = _linear(d, self.n_kv_heads * self.head_dim, attn.k_proj.bias is not None, generator)
        self.v_proj = _linear(d, self.n_kv_heads * self.head_dim, attn.v_proj.bias is not None, generator)
        self.o_proj = _linear(self.n_heads * self.head_dim, d, attn.o_proj.bias is not None, generator)
        self.norm_text = _rms_norm_like(host_layer.input_layernorm, d)
        self.norm_visual = _rms_norm_like(host_layer.input_layernorm, d)
        self.gate = nn.Parameter(torch.tensor(float(config.gate_init)))
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                mine, host = getattr(self, name), getattr(attn, name)
                if config.ca_init == "host":
                    mine.weight.copy_(host.weight)
                    if mine.bias is not None:
                        mine.bias.copy_(host.bias)
                else:
                    nn.init.normal_(mine.weight, std=0.02, generator=generator)
                    if mine.bias is not None:
                        nn.init.zeros_(mine.bias)

    def visual_kv(self, visual: torch.Tensor, rotary: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
        """visual [B, Tv, d] -> keys, values [B, kv, Tv, hd] (computed once per prompt, cached for decoding)."""
        x = self.norm_visual(visual)
        shape = (*x.shape[:2], self.n_kv_heads, self.head_dim)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        if self.rope and rotary is not None:
            k = _rope(k, *rotary)
        return k, v

    def forward(self, text, rotary, kv, visual_valid) -> torch.Tensor:
        """text [B, Tt, d], rotary (cos, sin) [B, Tt, hd], kv from `visual_kv`, visual_valid [B, Tv] bool."""
        x = self.norm_text(text)
        q = self.q_proj(x).view(*x.shape[:2], self.n_heads, self.head_dim).transpose(1, 2)  # [B, h, Tt, hd]
        if self.rope and rotary is not None:
            q = _rope(q, *rotary)
        k, v = kv
        groups = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(groups, dim=1)  # [B, h, Tv, hd]
        v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=visual_valid[:, None, None, :])
        out = out.transpose(1, 2).reshape(*text.shape[:2], -1)  # [B, Tt, h*hd]
        return text + torch.tanh(self.gate) * self.o_proj(out)


class VisorModules(nn.Module):
    """Everything VISOR adds to the host: CA blocks, positional conv, routing token and router.

    Initial weights come from a local generator seeded with `config.seed` (the global RNG is neither used nor
    reseeded), drawn in a fixed order: per CA layer (ascending) q, k, v, o weight + bias, then their
    ca_init="random" weights; the positional conv; the routing token. The router head has its own generator
    (seed + 1, see `make_router`)."""

    def __init__(self, host_layers, text_config, config: VisorConfig, n_viable: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(config.seed)
        d = text_config.hidden_size
        self.cross = nn.ModuleDict(
            {str(layer): CrossAttention(host_layers[layer], text_config, config, generator)
             for layer in config.ca_layers})
        self.pos_conv = None
        if config.conv_kernel and config.ca_layers:
            self.pos_conv = nn.utils.skip_init(nn.Conv1d, d, d, config.conv_kernel, padding=config.conv_kernel // 2,
                                               groups=d)
            _torch_default_init(self.pos_conv, generator)  # drawn, then zeroed: keeps the routing token's draw
            nn.init.zeros_(self.pos_conv.weight)
            nn.init.zeros_(self.pos_conv.bias)
        self.routing_token = None
        self.router = None
        if config.router_layer is not None:
            self.routing_token = nn.Parameter(torch.randn(d, generator=generator) * 0.02)
            if n_viable:
                self.make_router(n_viable, config)

    def make_router(self, n_viable: int, config: VisorConfig) -> None:
        d = self.routing_token.shape[0]
        generator = torch.Generator().manual_seed(config.seed + 1)
        # skip_init: no default init drawn from the global RNG; both layers are set from `generator` below
        router = nn.Sequential(nn.utils.skip_init(nn.Linear, d, config.router_hidden), nn.GELU(),
                               nn.utils.skip_init(nn.Linear, config.router_hidden, n_viable))
        with torch.no_grad():
            for layer in (router[0], router[2]):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(layer.in_features))
                layer.bias.zero_()
        self.router = router.to(self.routing_token.device, self.routing_token.dtype)


# ----------------------------------------------------------------------------------------------------------
# batch layout and cache


@dataclass
class Layout:
    """Where the text and visual tokens of a spliced batch sit.

    attention_mask [B, T], position_ids [B, T], visual_mask [B, T] as in SplicedBatch
    text_index  [B, Tt] positions of the text tokens, left-padded (pads point at 0); text_valid [B, Tt]
    visual_index [B, Tv] positions of the visual tokens, right-padded; visual_valid [B, Tv]
    """

    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    visual_mask: torch.Tensor
    text_index: torch.Tensor
    text_valid: torch.Tensor
    visual_index: torch.Tensor
    visual_valid: torch.Tensor

    @classmethod
    def build(cls, attention_mask, position_ids, visual_mask) -> "Layout":
        real = attention_mask.bool()
        is_text = real & ~visual_mask
        is_visual = real & visual_mask
        n_text, n_visual = is_text.sum(1), is_visual.sum(1)
        Tt, Tv = int(n_text.max()), max(1, int(n_visual.max()))
        T = attention_mask.shape[1]
        positions = torch.arange(T, device=attention_mask.device)
        # every row's text (visual) positions first and in order: sort on position, others pushed behind by T
        text_sorted = torch.where(is_text, positions, positions + T).sort(dim=1).values[:, :Tt]
        visual_sorted = torch.where(is_visual, positions, positions + T).sort(dim=1).values[:, :Tv]
        # text right-aligned (left-padded), visual left-aligned (right-padded); pads point at position 0
        source = torch.arange(Tt, device=positions.device) - (Tt - n_text)[:, None]  # [B, Tt]
        text_valid = source >= 0
        text_index = torch.where(text_valid, text_sorted.gather(1, source.clamp(min=0)), 0)
        visual_valid = torch.arange(Tv, device=positions.device) < n_visual[:, None]
        visual_index = torch.where(visual_valid, visual_sorted, 0)
        return cls(attention_mask, position_ids, visual_mask, text_index, text_valid, visual_index, visual_valid)

    def select(self, rows: torch.Tensor) -> "Layout":
        return Layout(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @property
    def text_positions(self) -> torch.Tensor:
        return self.position_ids.gather(1, self.text_index)

    @property
    def visual_positions(self) -> torch.Tensor:
        return self.position_ids.gather(1, self.visual_index)

    def n_text(self) -> list[int]:
        return self.text_valid.sum(1).tolist()

    def n_visual(self) -> list[int]:
        return self.visual_valid.sum(1).tolist()


def gather_rows(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """h [B, T, d], index [B, n] -> [B, n, d] (whole rows copied by index_select, much faster than gather)."""
    B, T, d = h.shape
    flat = (index + T * torch.arange(B, device=index.device)[:, None]).flatten()  # [B * n] into h viewed [B*T, d]
    return h.reshape(B * T, d).index_select(0, flat).view(B, index.shape[1], d)


def put_rows(h: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """h with h[b, index[b, j]] = values[b, j] where valid[b, j] (out of place, differentiable)."""
    B, T, d = h.shape
    flat = (index + T * torch.arange(B, device=index.device)[:, None])[valid]  # rows of h viewed [B*T, d]
    return h.reshape(B * T, d).index_copy(0, flat, values[valid]).view(B, T, d)


class VisorCache:
    """Per-layer self-attention K/V (full sequence for SA layers, text only for the others) and the
    constant visual K/V of every CA block. Implements the `update` the host attention modules call."""

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx in self.keys:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key_states], dim=-2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value_states], dim=-2)
        else:
            self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return self.keys[layer_idx], self.values[layer_idx]

    def drop_last(self, layers) -> None:
        for layer in layers:
            if layer in self.keys:
                self.keys[layer] = self.keys[layer][..., :-1, :]
                self.values[layer] = self.values[layer][..., :-1, :]

    def select(self, rows: torch.Tensor) -> "VisorCache":
        other = VisorCache()
        other.keys = {layer: k[rows] for layer, k in self.keys.items()}
        other.values = {layer: v[rows] for layer, v in self.values.items()}
        other.cross = {layer: (k[rows], v[rows]) for layer, (k, v) in self.cross.items()}
        return other

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2] if layer_idx in self.keys else 0


def mask_4d(allowed: torch.Tensor, config, dtype) -> torch.Tensor:
    """allowed [B, Q, K] bool -> the 4D mask the host's attention implementation expects."""
    impl = config._attn_implementation
    if impl == "sdpa":
        return allowed[:, None]
    if impl == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )[:, None]
    raise ValueError(f"VISOR supports attn_implementation 'sdpa' or 'eager', not {impl!r}")


def text_causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid [B, n] (left-padded) -> allowed [B, n, n]: causal over real keys; pad queries see themselves."""
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=valid.device)
    return (causal[None] & valid[:, None, :]) | eye[None]


# ----------------------------------------------------------------------------------------------------------
# the model


@dataclass
class PrefillState:
    h: torch.Tensor  # [B, T, d] text tokens hold the latest text state, visual tokens the latest visual state
    layout: Layout
    cache: VisorCache | None
    conv_done: bool = False

    def select(self, rows) -> "PrefillState":
        return PrefillState(self.h[rows], self.layout.select(rows), self.cache.select(rows) if self.cache else None,
                            self.conv_done)


@dataclass
class VisorOutput:
    token_ids: list[list[int]]  # generated ids per row, eos excluded
    finish_reasons: list[str]  # per row: "eos", "stop" or "length" (visor_model.llava.generation)
    configurations: list[tuple[int, ...]]  # SA layers that ran, per row
    roles: list[tuple[str, ...]]
    n_visual: list[int]  # visual tokens in the LLM (newline tokens included)
    n_text: list[int]  # text tokens of the prompt
    probabilities: list[list[float]] | None = None  # router output per row (policy only)


class VisorModel(nn.Module):
    """The host LLaVA model plus the VISOR modules. The host's weights are used in place (not copied).

    `metadata`: the visor_config.json record (visor_config, viable, training) of a checkpoint this model was
    loaded from (`load_visor`), None for a new model."""

    def __init__(self, base: nn.Module, config: VisorConfig, viable: list[tuple[int, ...]] | None = None,
                 metadata: dict | None = None):
        super().__init__()
        self.base = base
        self.config = config
        self.metadata = metadata
        lm = base.model.language_model
        if config.n_layers != lm.config.num_hidden_layers:
            raise ValueError(f"VisorConfig.n_layers={config.n_layers} but the host has {lm.config.num_hidden_layers}")
        self.viable: list[tuple[int, ...]] = [config.check_active(v) for v in (viable or [])]
        self.router_output = (metadata or {}).get("router_output", "sigmoid")  # see `route`; set by train_router
        if self.router_output not in ROUTER_OUTPUTS.values():
            raise ValueError(f"unknown router_output {self.router_output!r}; known: {sorted(ROUTER_OUTPUTS.values())}")
        self.visor = VisorModules(lm.layers, lm.config, config, n_viable=len(self.viable))
        self.visor.to(next(base.parameters()).device, next(base.parameters()).dtype)

    # -- host pieces
    @property
    def lm(self):
        return self.base.model.language_model

    @property
    def text_config(self):
        return self.lm.config

    def flop_cost(self, model=None) -> VisorCost:
        """VISOR's own FLOPs for the accountant: the positional conv (with CA layers) and a trained router."""
        router, layer = self.visor.router, self.config.router_layer
        sizes = None if router is None else (router[0].in_features, router[0].out_features, router[-1].out_features)
        return VisorCost(self.config.conv_kernel if self.config.ca_layers else 0,
                         layer if sizes is not None else None, sizes if layer is not None else None)

    def set_viable(self, viable: list[tuple[int, ...]]) -> None:
        """Fix the viable configurations (cheapest first); (re)creates the router's output layer."""
        self.viable = [self.config.check_active(v) for v in viable]
        if self.config.router_layer is not None:
            self.visor.make_router(len(self.viable), self.config)

    def configuration_for(self, sa_layers: int) -> tuple[int, ...]:
        """The viable configuration with `sa_layers` SA layers (ValueError listing the available counts)."""
        pool = self.viable or self.config.family()
        for active in pool:
            if len(active) == int(sa_layers):
                return active
        raise ValueError(
            f"no viable VISOR configuration with sa_layers={sa_layers}; available: {sorted(len(a) for a in pool)}"
        )

    # -- one prefill pass over a range of layers
    def start(self, batch: SplicedBatch, use_cache: bool, routing: bool = False) -> tuple[PrefillState, int]:
        """Initial state; with `routing`, the routing token is appended after the prompt (position = the
        row's length, visual_mask False). Returns the state and the prompt length T without the token."""
        h, attention_mask, position_ids, visual_mask = (
            batch.inputs_embeds, batch.attention_mask, batch.position_ids, batch.visual_mask)
        T = h.shape[1]
        if routing:
            B = h.shape[0]
            token = self.visor.routing_token.to(h.dtype)[None, None].expand(B, 1, -1)
            h = torch.cat([h, token], dim=1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
            position_ids = torch.cat([position_ids, position_ids[:, -1:] + 1], dim=1)
            visual_mask = torch.cat([visual_mask, visual_mask.new_zeros(B, 1)], dim=1)
        layout = Layout.build(attention_mask, position_ids, visual_mask)
        return PrefillState(h, layout, VisorCache() if use_cache else None), T

    def run_layers(self, state: PrefillState, start: int, stop: int, active) -> PrefillState:
        """Prefill layers [start, stop) with the SA layers `active`."""
        from transformers.masking_utils import create_causal_mask

        lm, config = self.lm, self.config
        roles = config.roles(active)
        h, layout, cache = state.h, state.layout, state.cache
        # Through a run of text-only and CA layers the text stream stays gathered in `text` (h's text rows are
        # stale meanwhile); it goes back into h before an SA layer and at the end.
        text = None
        full_mask = full_rotary = text_mask = text_rotary = visual_rotary = None
        for layer_idx in range(start, stop):
            layer = lm.layers[layer_idx]
            if roles[layer_idx] == SA:
                if text is not None:
                    h, text = put_rows(h, layout.text_index, layout.text_valid, text), None
                if full_mask is None:
                    # exactly what the host's forward builds for this batch
                    full_mask = create_causal_mask(config=lm.config, inputs_embeds=h,
                                                   attention_mask=layout.attention_mask,
                                                   past_key_values=None, position_ids=layout.position_ids)
                    full_rotary = lm.rotary_emb(h, layout.position_ids)
                h = layer(h, attention_mask=full_mask, position_embeddings=full_rotary,
                          position_ids=layout.position_ids, past_key_values=cache, use_cache=cache is not None)
                continue
            if text_mask is None:
                text_mask = mask_4d(text_causal_mask(layout.text_valid), lm.config, h.dtype)
                text_rotary = lm.rotary_emb(h, layout.text_positions)
            if roles[layer_idx] == CA:
                if not state.conv_done and self.visor.pos_conv is not None:
                    h = self._positional_conv(h, layout)
                    state.conv_done = True
                if visual_rotary is None:
                    visual_rotary = lm.rotary_emb(h, layout.visual_positions)
                block = self.visor.cross[str(layer_idx)]
                kv = block.visual_kv(gather_rows(h, layout.visual_index), visual_rotary)
                if cache is not None:
                    cache.cross[layer_idx] = kv
                text = gather_rows(h, layout.text_index) if text is None else text
                text = block(text, text_rotary, kv, layout.visual_valid)
            elif text is None:
                text = gather_rows(h, layout.text_index)
            text = layer(text, attention_mask=text_mask, position_embeddings=text_rotary,
                         position_ids=layout.text_positions, past_key_values=cache, use_cache=cache is not None)
        state.h = h if text is None else put_rows(h, layout.text_index, layout.text_valid, text)
        return state

    def _positional_conv(self, h, layout: Layout) -> torch.Tensor:
        visual = gather_rows(h, layout.visual_index) * layout.visual_valid[..., None]  # [B, Tv, d], pads zero
        visual = visual + self.visor.pos_conv(visual.transpose(1, 2)).transpose(1, 2)
        return put_rows(h, layout.visual_index, layout.visual_valid, visual)

    def router_logits(self, state: PrefillState) -> torch.Tensor:
        """Router logits [B, n_viable] (float32) from the routing token (the last text column), read at the
        input of the router layer."""
        token = gather_rows(state.h, state.layout.text_index[:, -1:])[:, 0]  # [B, d]
        return self.visor.router(token).float()

    def route(self, state: PrefillState) -> torch.Tensor:
        """Router probabilities [B, n_viable]: P(configuration suffices), cheapest configuration first. A BCE
        router's sigmoids; a cross-entropy router predicts the cheapest sufficing configuration, so P(c suffices)
        is its cumulative softmax up to c."""
        logits = self.router_logits(state)
        if self.router_output == "cumulative_softmax":
            return torch.softmax(logits, dim=-1).cumsum(dim=-1).clamp(max=1.0)
        return torch.sigmoid(logits)

    def strip_routing_token(self, state: PrefillState, T: int, upto: int) -> PrefillState:
        layout = state.layout
        state.h = state.h[:, :T]
        state.layout = Layout.build(layout.attention_mask[:, :T], layout.position_ids[:, :T], layout.visual_mask[:, :T])
        if state.cache is not None:
            state.cache.drop_last(range(upto))
        return state

    def forward(self, batch: SplicedBatch, active) -> tuple[torch.Tensor, Layout]:
        """Full prefill (no cache) with a fixed configuration. Returns the final hidden states of every
        position, normed, [B, T, d] (visual positions hold the visual state) and the layout."""
        active = self.config.check_active(active)
        state, _ = self.start(batch, use_cache=False)
        state = self.run_layers(state, 0, self.config.n_layers, active)
        return self.lm.norm(state.h), state.layout

    def text_logits(self, batch: SplicedBatch, active) -> tuple[torch.Tensor, Layout]:
        """Logits at the text positions [B, Tt, vocab] (left-padded, `layout.text_valid`)."""
        hidden, layout = self.forward(batch, active)
        return self.base.lm_head(gather_rows(hidden, layout.text_index)), layout

    # -- policy
    @torch.no_grad()
    def router_probabilities(self, batch: SplicedBatch) -> torch.Tensor:
        r = self._require_router()
        state, T = self.start(batch, use_cache=False, routing=True)
        state = self.run_layers(state, 0, r, ())
        return self.route(state)

    def _require_router(self) -> int:
        r = self.config.router_layer
        if r is None or self.visor.router is None:
            raise ValueError("this VISOR checkpoint has no trained router; use sa_layers=K")
        return r

    # -- generation
    @torch.no_grad()
    def generate(self, batch: SplicedBatch, max_new_tokens, eos_token_id, active=None,
                 threshold: float | None = None, use_cache: bool = True, stop_strings=None,
                 decode=None) -> VisorOutput:
        """Greedy answers for a left-padded batch, either with a fixed configuration (`active`) or with the
        policy at `threshold`. Rows that pick different configurations are continued as separate groups
        after the router (the layers before it run once for the whole batch). Each row stops on its own
        (`max_new_tokens`, `eos_token_id`, `stop_strings`, `decode`: as `StoppingCriteria.for_batch`)."""
        B = batch.inputs_embeds.shape[0]
        stopping = StoppingCriteria.for_batch(B, max_new_tokens, eos_token_id, stop_strings, decode)
        probabilities = None
        if threshold is None:
            active = self.config.check_active(active if active is not None else self.config.sa_candidates)
            groups = {active: torch.arange(B)}
            state, T, r = None, None, 0
        else:
            r = self._require_router()
            state, T = self.start(batch, use_cache, routing=True)
            state = self.run_layers(state, 0, r, ())
            probs = self.route(state)
            state = self.strip_routing_token(state, T, r)
            probabilities = probs.tolist()
            chosen = choose_configuration(probs, threshold)
            groups = {}
            for row, index in enumerate(chosen):
                groups.setdefault(self.viable[index], []).append(row)
            groups = {a: torch.tensor(rows) for a, rows in groups.items()}

        token_ids: list[list[int]] = [[] for _ in range(B)]
        finish_reasons: list[str] = [""] * B
        configurations: list[tuple[int, ...]] = [()] * B
        layout_all = Layout.build(batch.attention_mask, batch.position_ids, batch.visual_mask)
        for active, rows in groups.items():
            if state is None:
                sub = batch if len(groups) == 1 else _select_batch(batch, rows)
                group_state = None
            else:
                sub = _select_batch(batch, rows)
                group_state = state.select(rows)
            decoded = (self._generate_cached if use_cache else self._generate_uncached)(
                sub, group_state, r, active, stopping.select(rows.tolist()))
            for row, out, reason in zip(rows.tolist(), decoded.generated, decoded.finish_reasons):
                token_ids[row] = out
                finish_reasons[row] = reason
                configurations[row] = active
        return VisorOutput(
            token_ids=token_ids,
            finish_reasons=finish_reasons,
            configurations=configurations,
            roles=[self.config.roles(a) for a in configurations],
            n_visual=layout_all.n_visual(),
            n_text=layout_all.n_text(),
            probabilities=probabilities,
        )

    def _logits_last(self, h_last: torch.Tensor) -> torch.Tensor:
        return self.base.lm_head(self.lm.norm(h_last))

    def _generate_cached(self, batch, state, start_layer, active, stopping: StoppingCriteria) -> GreedyRows:
        if state is None:
            state, _ = self.start(batch, use_cache=True)
            start_layer = 0
        state = self.run_layers(state, start_layer, self.config.n_layers, active)
        roles = self.config.roles(active)
        cache, layout = state.cache, state.layout
        full_keys = layout.attention_mask.bool()  # [B, T]
        text_keys = layout.text_valid  # [B, Tt]
        next_position = layout.position_ids[:, -1:] + 1
        logits = self._logits_last(state.h[:, -1])
        B = logits.shape[0]
        embed = self.base.get_input_embeddings()
        rows = GreedyRows(stopping)
        while True:
            next_ids = logits.argmax(dim=-1)
            if rows.append(next_ids):
                break
            ones = full_keys.new_ones(B, 1)
            full_keys = torch.cat([full_keys, ones], dim=1)
            text_keys = torch.cat([text_keys, ones], dim=1)
            x = embed(next_ids[:, None])  # [B, 1, d]
            rotary = self.lm.rotary_emb(x, next_position)
            masks = {SA: mask_4d(full_keys[:, None, :], self.lm.config, x.dtype),
                     TEXT: mask_4d(text_keys[:, None, :], self.lm.config, x.dtype)}
            for layer_idx, layer in enumerate(self.lm.layers):
                if roles[layer_idx] == CA:
                    x = self.visor.cross[str(layer_idx)](x, rotary, cache.cross[layer_idx], layout.visual_valid)
                x = layer(x, attention_mask=masks[SA if roles[layer_idx] == SA else TEXT], position_embeddings=rotary,
                          position_ids=next_position, past_key_values=cache, use_cache=True)
            logits = self._logits_last(x[:, -1])
            next_position = next_position + 1
        return rows

    def _generate_uncached(self, batch, state, start_layer, active, stopping: StoppingCriteria) -> GreedyRows:
        """Reference decoding: the whole prefill again for every new token (tests the cache)."""
        B = batch.inputs_embeds.shape[0]
        embed = self.base.get_input_embeddings()
        rows = GreedyRows(stopping)
        while True:
            hidden, _ = self.forward(batch, active)
            next_ids = self.base.lm_head(hidden[:, -1]).argmax(dim=-1)
            if rows.append(next_ids):
                break
            batch = SplicedBatch(
                inputs_embeds=torch.cat([batch.inputs_embeds, embed(next_ids[:, None])], dim=1),
                attention_mask=torch.cat([batch.attention_mask, batch.attention_mask.new_ones(B, 1)], dim=1),
                position_ids=torch.cat([batch.position_ids, batch.position_ids[:, -1:] + 1], dim=1),
                visual_mask=torch.cat([batch.visual_mask, batch.visual_mask.new_zeros(B, 1)], dim=1),
            )
        return rows


def _select_batch(batch: SplicedBatch, rows: torch.Tensor) -> SplicedBatch:
    return SplicedBatch(batch.inputs_embeds[rows], batch.attention_mask[rows], batch.position_ids[rows],
                        batch.visual_mask[rows], None if batch.labels is None else batch.labels[rows])


def choose_configuration(probabilities: torch.Tensor, threshold: float) -> list[int]:
    """probabilities [B, n] over configurations ordered cheapest first -> chosen index per row: the cheapest
    configuration whose predicted probability of sufficing is >= threshold; the largest one if none."""
    passing = probabilities >= threshold
    n = probabilities.shape[1]
    return [int(torch.nonzero(row)[0]) if bool(row.any()) else n - 1 for row in passing]


def check_threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return value


# ----------------------------------------------------------------------------------------------------------
# checkpoint I/O


def save_visor(model: VisorModel, out_dir: Path, tokenizer, image_processor, record: dict | None = None) -> None:
    """Base checkpoint files (save_pretrained) + visor.safetensors + visor_config.json, written atomically."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        model.base.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        save_file({k: v.detach().contiguous() for k, v in model.visor.state_dict().items()}, str(tmp / VISOR_WEIGHTS))
        (tmp / VISOR_CONFIG).write_text(json.dumps({
            "visor_config": model.config.to_dict(),
            "viable": [list(v) for v in model.viable],
            "router_output": model.router_output,
            "training": record or {},
        }, indent=2))

    replace_folder_atomically(Path(out_dir), write)


def load_visor(source: str, revision: str | None = None, device: str = "cpu", dtype: str = "float32"):
    """(LoadedCheckpoint, VisorModel) from a folder written by `save_visor`."""
    from safetensors.torch import load_file

    from visor_model.llava.checkpoints import CheckpointError, load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(source, revision)
    if not (path / VISOR_CONFIG).is_file() or not (path / VISOR_WEIGHTS).is_file():
        raise CheckpointError(f"{path} is not a VISOR checkpoint (needs {VISOR_CONFIG} and {VISOR_WEIGHTS}); "
                              "train one with python -m visor_model.methods.visor.training")
    loaded = load_checkpoint(str(path), None, device, dtype)
    meta = json.loads((path / VISOR_CONFIG).read_text())
    config = VisorConfig.from_dict(meta["visor_config"])
    model = VisorModel(loaded.model, config, [tuple(v) for v in meta.get("viable", [])], metadata=meta)
    state = load_file(str(path / VISOR_WEIGHTS))
    if "router.0.weight" not in state:
        model.visor.router = None
    missing, unexpected = model.visor.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.startswith("router.")]:
        raise CheckpointError(f"{path / VISOR_WEIGHTS} does not match {VISOR_CONFIG}: "
                              f"missing {missing}, unexpected {unexpected}")
    model.to(device).eval()
    return loaded, model
