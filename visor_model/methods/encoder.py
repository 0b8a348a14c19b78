"""The vision encoder as the token-reduction methods read it: its layers, whether it has a CLS token, which layer
feeds the projector, and attention scores of its patches (the CLS attention, or the CLS-free substitute
`mean_received`). Shared by HiRED, VisionZip and PruMerge."""

from __future__ import annotations

import math

import torch


def _tower(model):
    tower = model.model.vision_tower
    return getattr(tower, "vision_model", tower)  # transformers < 5 wraps the transformer in .vision_model


def encoder_layers(model):
    return _tower(model).encoder.layers


def encoder_has_cls(model) -> bool:
    """CLIP prepends a learned class embedding; SigLIP has none."""
    return hasattr(_tower(model).embeddings, "class_embedding")


def resolve_score(model, score: str | None) -> str:
    """The patch score a reducer uses on `model`: `score`, or by default the CLS attention where the encoder has a
    CLS token and the CLS-free substitute `mean_received` where it has none; `cls` on a CLS-free encoder is an error."""
    has_cls = encoder_has_cls(model)
    score = score or ("cls" if has_cls else "mean_received")
    if score == "cls" and not has_cls:
        raise ValueError(
            "score='cls' needs an encoder with a CLS token (CLIP, vision_feature_select_strategy='default'); "
            f"this model's {type(model.model.vision_tower).__name__} has none: use score='mean_received'"
        )
    return score


def feature_layer(model) -> int:
    """Index of the encoder layer whose output LLaVA feeds to the projector.

    `hidden_states[i]` is the input of layer i (hidden_states[0] = embeddings), so `vision_feature_layer = v`
    selects the output of layer (v mod (L + 1)) - 1: -2 -> layer L - 2 (22 of 24 in LLaVA-NeXT), -1 -> the
    last layer (LLaVA-OneVision). With several feature layers, the deepest is used."""
    n_layers = len(encoder_layers(model))
    layers = model.config.vision_feature_layer
    layers = [layers] if isinstance(layers, int) else list(layers)
    layer = max(v % (n_layers + 1) for v in layers) - 1
    if layer < 0:
        raise ValueError("selection_layer cannot be derived: the projector reads the embeddings; set it explicitly")
    return layer


@torch.no_grad()
def attention_queries_keys(layer, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The queries and keys of one encoder layer's self-attention, recomputed from the hidden states entering it.

    layer:  a CLIP/SigLIP encoder layer (`layer_norm1`, `self_attn.q_proj/k_proj`)
    hidden: [c, seq, d_v]
    returns q, k: [c, H, seq, d_h] float32 (the projections run in the model's dtype)
    """
    attn = layer.self_attn
    heads, head_dim = attn.num_heads, attn.head_dim
    x = layer.layer_norm1(hidden)  # [c, seq, d_v]
    c, seq, _ = x.shape
    q = attn.q_proj(x).view(c, seq, heads, head_dim).transpose(1, 2).float()
    k = attn.k_proj(x).view(c, seq, heads, head_dim).transpose(1, 2).float()
    return q, k


def scores_from_queries_keys(q: torch.Tensor, k: torch.Tensor, score: str, has_cls: bool,
                             head: int | None = None) -> torch.Tensor:
    """Per-patch importance [c, P] from a layer's q, k [c, H, seq, d_h], summed over heads, or one `head`'s."""
    first = 1 if has_cls else 0  # index of the first patch token
    if score == "cls":
        logits = q[:, :, :1] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [c, H, 1, seq]
        per_head = logits.softmax(dim=-1)[:, :, 0, first:]  # [c, H, P]
    else:
        logits = q[:, :, first:] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [c, H, P, seq]
        per_head = logits.softmax(dim=-1)[..., first:].mean(dim=2)  # [c, H, P (keys)], mean over the P queries
    return per_head.sum(dim=1) if head is None else per_head[:, head]  # [c, P]


@torch.no_grad()
def attention_scores(layer, hidden: torch.Tensor, score: str, has_cls: bool, chunk: int = 4,
                     head: int | None = None) -> torch.Tensor:
    """Per-patch importance from one encoder layer's self-attention, summed over heads (`head`: that one alone).

    layer:  a CLIP/SigLIP encoder layer (`layer_norm1`, `self_attn.q_proj/k_proj`)
    hidden: [n_crops, seq, d_v], the hidden states entering `layer` (seq = P + 1 with CLS, else P)
    returns [n_crops, P] float32:
      "cls":           sum_h softmax(q_cls k^T / sqrt(d_h))[patches]   (only the CLS query row is computed)
      "mean_received": sum_h mean_{i in patches} softmax(q_i k^T / sqrt(d_h))[patches]
    Softmax runs over the whole sequence (CLS key included), exactly as in the layer's own attention.
    """
    out = []
    for start in range(0, hidden.shape[0], chunk):  # bounded memory: the mean-received map is [c, H, P, seq]
        q, k = attention_queries_keys(layer, hidden[start : start + chunk])
        out.append(scores_from_queries_keys(q, k, score, has_cls, head))
    return torch.cat(out, dim=0)
