"""Where the text and visual tokens of a spliced batch sit (`Layout`), moving rows between the full sequence and
its text or visual part, VISOR's KV cache (`VisorCache`) and the attention masks it builds
(visor_model.methods.visor.modeling runs the layers on them). Shapes as in modeling's docstring."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


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
