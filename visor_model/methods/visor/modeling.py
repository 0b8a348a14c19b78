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

The modules VISOR adds are in `visor_model.methods.visor.modules`, the batch layout, KV cache and masks in
`visor_model.methods.visor.layout`.

Shapes: B batch, T spliced prompt length (left-padded), Tt text tokens (left-padded), Tv visual tokens
(right-padded), d hidden, h query heads, kv key/value heads, hd head dim, K cached keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from visor_model.files import replace_folder_atomically
from visor_model.llava.generation import GreedyRows, StoppingCriteria
from visor_model.llava.visual import SplicedBatch
from visor_model.methods.visor.config import CA, SA, TEXT, VisorConfig, VisorCost, default_layers, spread  # noqa: F401
from visor_model.methods.visor.layout import Layout, VisorCache, gather_rows, mask_4d, put_rows, text_causal_mask
from visor_model.methods.visor.modules import VisorModules

VISOR_WEIGHTS = "visor.safetensors"
VISOR_CONFIG = "visor_config.json"
# router loss -> how its logits become P(configuration suffices) (`VisorModel.route`)
ROUTER_OUTPUTS = {"bce": "sigmoid", "ce": "cumulative_softmax"}


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

