"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", arXiv 2403.06764): visual tokens pruned inside
the LLM, after its first K layers, by the attention they receive there.

    layers 0 .. K-1      the whole prompt (as the base model)
    layer K-1            also: its attention probabilities, recomputed from its input, rank the visual patch tokens
    layers K .. L-1      the prompt without the R least-attended share of the visual patch tokens

K and R are FastV's (the paper's "K=2, R=50%" is `k=2, ratio=0.5`). The official code (github.com/pkunlp-icler/FastV,
its LLaMA `forward`s and its llava-hf port) prunes at the input of layer index K with the attention weights of layer
index K-1 and asserts K > 0, so 1 <= k < L here (k = L would prune no layer). It keeps
`round(n_image_tokens * (1 - R))` tokens (Python's round: ties to even), the top ones by score; here n is the
sample's visual *patch* tokens and ties go to the lower position (a stable sort; torch.topk's tie order is
unspecified).

Score (`score`):
  "last"  the attention the last prompt token pays each visual token, averaged over heads: what the official code
          ranks by (`attention.mean(dim=1)[0][-1]`, both implementations). The default.
  "mean"  the attention each visual token receives from all n prompt tokens, sum_j alpha_ij / n, averaged over heads:
          the paper's description (Sec. 4). Causal attention: a token receives attention only from the tokens after
          it (the masked pairs count as 0), so earlier tokens are favoured.
Scores are computed in float32 (q and k from the layer's own input norm, q/k projections, RoPE and grouped-query
layout; softmax(q k^T / sqrt(hd)) under the causal and padding mask): only layer K-1 computes probabilities, every
layer runs the model's own attention implementation (SDPA by default; the official code switches to eager).

Choices where the paper is silent, or that differ from the official code:
  - Newline tokens (LLaVA-NeXT / OneVision's row separators; FastV was written for LLaVA-1.5, which has none) are
    not candidates: they stay in every layer and R counts patch tokens only, as the project's other budgets do.
  - Positions: the kept tokens keep their original position ids (as the official code: `position_ids =
    keep_indexs`), so RoPE sees the same positions as in the unpruned model; decode positions continue after the
    whole prompt.
  - KV cache: pruning is static, once at prefill (the official KV-cache mode; its README: "all subsequent decoding
    tokens uniformly attend to the same set of image tokens"). Layers < K keep the whole prompt's K/V as computed
    (so decode tokens there attend every visual token, as in the official code), layers >= K cache the pruned
    prompt. `generate(use_cache=False)` recomputes the pruned model from scratch for every token with the same
    kept tokens (the reference the cache is tested against).
  - Batches: each row is pruned on its own scores and keeps round(n_row (1 - R)) of its own patch tokens; the
    pruned rows are left-padded again. At R = 0 the pruned layout is the prompt's own, so the model is the base
    model bit for bit (tests/test_fastv.py).

Shapes: B batch, T prompt length (left-padded), T' pruned length, d hidden, h query heads, hd head dim.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from visor_model.efficiency.accounting import MethodCost, Overhead, SampleTokens
from visor_model.efficiency.flops import FlopTerms, attention_pairs
from visor_model.efficiency.shapes import LlavaShape, LLMShape
from visor_model.efficiency.shapes import check_count as _count
from visor_model.llava.checkpoints import LoadedCheckpoint
from visor_model.llava.generation import GreedyOutput, GreedyRows, StoppingCriteria
from visor_model.llava.runner import SampleRecord, VisionLanguageRunner, eos_token_ids
from visor_model.llava.visual import SplicedBatch
from visor_model.methods.base import FullTokens, check_integer

SCORES = ("last", "mean")  # the ranking scores (see the module docstring)


def rank_flops(shape: LLMShape, n_tokens: int, score: str, causal_mode: str = "causal") -> FlopTerms:
    """The ranking (`FastV.attention_scores`): layer K-1's q and k recomputed from its input of n tokens, then the
    scores q k^T of Q queries (Q = 1 for score "last", n for "mean"); the softmax and the sums are elementwise (not
    counted). The layer's own attention runs as usual beside it.

        q_proj       2 * Q * d * (h * hd)
        k_proj       2 * n * d * (kv * hd)
        attn_scores  2 * P * h * hd          P = n ("last"); "mean": n^2 (dense), n (n + 1) / 2 (causal)
    """
    n = _count("n_tokens", n_tokens)
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    queries = 1 if score == "last" else n
    return FlopTerms.of({
        "q_proj": 2 * queries * shape.hidden * shape.q_dim,
        "k_proj": 2 * n * shape.hidden * shape.kv_dim,
        "attn_scores": 2 * attention_pairs(queries, n, causal_mode) * shape.n_heads * shape.head_dim,
    })


@dataclass(frozen=True)
class FastVConfig(MethodCost):
    """k: layers on the whole prompt (FastV's K, >= 1); ratio: share of visual patch tokens dropped after them
    (FastV's R, in [0, 1)); score: "last" (official code) or "mean" (the paper's formula). It is FastV's `MethodCost`
    too: the ranking at layer K-1, charged on samples that carry their visual tokens per layer."""

    k: int
    ratio: float
    score: str = "last"

    sample_fields = ("visual_per_layer",)

    def __post_init__(self):
        k = check_integer(self.k, "k")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {self.k!r}: FastV ranks the visual tokens by the attention of "
                             "its K-th layer (the official code asserts K > 0); to drop tokens before the LLM use "
                             "random_drop or hired")
        try:
            ratio = float(self.ratio)
        except (TypeError, ValueError):
            raise ValueError(f"ratio must be a number in [0, 1) (the share of visual tokens dropped), "
                             f"got {self.ratio!r}") from None
        if not 0.0 <= ratio < 1.0 or math.isnan(ratio):
            raise ValueError(f"ratio must be in [0, 1) (the share of visual tokens dropped), got {self.ratio!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "ratio", ratio)

    def check_depth(self, n_layers: int) -> None:
        if not self.k < n_layers:
            raise ValueError(f"k={self.k} but the LLM has {n_layers} layers: FastV needs 1 <= k < {n_layers} "
                             f"(layers k..{n_layers - 1} run on the pruned prompt)")

    def kept(self, n_patches: int) -> int:
        """Visual patch tokens kept from layer k on: round(n (1 - R)), the official code's expression."""
        return round(n_patches * (1 - self.ratio))

    def flop_cost(self, model) -> FastVConfig:
        return self

    def overhead_flops(self, shape: LlavaShape, tokens: SampleTokens, causal_mode: str = "causal") -> Overhead:
        """The ranking (`rank_flops`, terms "rank.*") on layer K-1's sequence: the text and its visual tokens."""
        if tokens.visual_per_layer is None:
            raise ValueError("a FastV accountant needs samples with visual_per_layer (its runner's records)")
        n_ranked = tokens.n_text + tokens.visual_per_layer[self.k - 1]
        return Overhead(prefill=rank_flops(shape.llm, n_ranked, self.score, causal_mode).prefixed("rank."))


@dataclass
class Pruning:
    """Which prompt tokens layers k.. see, and their left-padded layout.

    keep:           [B, T] True for the real prompt tokens kept (text, newline tokens and the top-scored patches)
    index:          [B, T'] the prompt position of each pruned slot (pad slot j: position j, never attended)
    attention_mask: [B, T'] 1 for kept tokens
    position_ids:   [B, T'] their original position ids
    patch_tokens / visual_tokens: per row, patch tokens / visual tokens (newlines included) kept
    """

    keep: torch.Tensor
    index: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    patch_tokens: list[int]
    visual_tokens: list[int]

    @classmethod
    def from_keep(cls, keep: torch.Tensor, batch: SplicedBatch) -> Pruning:
        T = keep.shape[1]
        counts = keep.sum(1)  # [B]
        width = int(counts.max())
        positions = torch.arange(T, device=keep.device)
        # kept positions first and in order (the others pushed behind by T), then right-aligned in `width` slots
        ordered = torch.where(keep, positions, positions + T).sort(dim=1).values[:, :width]
        source = torch.arange(width, device=keep.device) - (width - counts)[:, None]  # [B, T']
        valid = source >= 0
        index = torch.where(valid, ordered.gather(1, source.clamp(min=0)), torch.arange(width, device=keep.device))
        visual = batch.visual_mask & keep
        patches = visual & ~_newlines(batch)
        return cls(keep, index, valid.long(), batch.position_ids.gather(1, index), patches.sum(1).tolist(),
                   visual.sum(1).tolist())

    def gather(self, h: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, T', d]: the pruned rows' hidden states."""
        rows = torch.arange(h.shape[0], device=h.device)[:, None]
        return h[rows, self.index]


@dataclass
class FastVOutput(GreedyOutput):
    patch_tokens_after: list[int] = field(default_factory=list)  # per row: patch tokens layers k.. see
    visual_tokens_after: list[int] = field(default_factory=list)  # the same with the newline tokens


def _newlines(batch: SplicedBatch) -> torch.Tensor:
    """[B, T] newline tokens of the batch (none when it was built without `ImageTokens`)."""
    return batch.newline_mask if batch.newline_mask is not None else torch.zeros_like(batch.visual_mask)


def _rope(attention):
    """The attention module's own `apply_rotary_pos_emb` (Qwen2, Llama: from its modeling module)."""
    return sys.modules[type(attention).__module__].apply_rotary_pos_emb


class FastV:
    """FastV on a loaded LLaVA-NeXT / LLaVA-OneVision model (its weights used in place, nothing added)."""

    def __init__(self, model, config: FastVConfig):
        self.model = model
        self.config = config
        lm = model.model.language_model
        config.check_depth(lm.config.num_hidden_layers)
        kinds = set(getattr(lm.config, "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"}:
            raise ValueError(f"FastV supports full-attention LLM layers only, the model has {sorted(kinds)}")

    @property
    def lm(self):
        return self.model.model.language_model

    def visual_per_layer(self, before: int, after: int) -> tuple[int, ...]:
        """Visual tokens in each layer's sequence: `before` (all) in layers < k, `after` (kept) from layer k on."""
        k = self.config.k
        return (before,) * k + (after,) * (len(self.lm.layers) - k)

    # -- the ranking
    def attention_scores(self, layer_idx: int, h: torch.Tensor, rotary: tuple, attention_mask: torch.Tensor
                         ) -> torch.Tensor:
        """Attention received per key token [B, T] (float32, heads averaged) in layer `layer_idx` whose input is
        h [B, T, d], under `config.score`: from the last query ("last") or summed over the n real queries / n
        ("mean"). rotary: the (cos, sin) [B, T, hd] the layer gets; attention_mask [B, T] (left padding)."""
        layer = self.lm.layers[layer_idx]
        attention = layer.self_attn
        B, T, _ = h.shape
        hd = attention.head_dim
        queries = slice(T - 1, T) if self.config.score == "last" else slice(0, T)
        x = layer.input_layernorm(h)
        cos, sin = rotary
        q = attention.q_proj(x[:, queries])
        q = q.view(*q.shape[:2], -1, hd).transpose(1, 2)  # [B, h, Q, hd]
        k = attention.k_proj(x).view(B, T, -1, hd).transpose(1, 2)  # [B, kv, T, hd]
        rope = _rope(attention)
        q = rope(q, q, cos[:, queries], sin[:, queries])[0]  # [B, h, Q, hd]
        k = rope(k, k, cos, sin)[0].repeat_interleave(attention.num_key_value_groups, dim=1)  # [B, h, T, hd]
        real = attention_mask.bool()
        positions = torch.arange(T, device=h.device)
        query_real = real[:, queries]  # [B, Q]
        allowed = real[:, None, :] & (positions[None, :] <= positions[queries, None])[None]  # [B, Q, T]
        allowed = allowed | ~query_real[:, :, None]  # pad queries see everything; their rows are zeroed below
        received = []
        for row in range(B):  # one row's [h, Q, T] probabilities at a time ("mean": Q = T)
            logits = (q[row].float() @ k[row].float().transpose(-1, -2)) * attention.scaling  # [h, Q, T]
            probs = torch.softmax(logits.masked_fill(~allowed[row], float("-inf")), dim=-1)
            probs = probs * query_real[row][None, :, None]
            received.append(probs.sum(dim=1).mean(dim=0) / query_real[row].sum())  # [T]
        return torch.stack(received)

    def select(self, scores: torch.Tensor, batch: SplicedBatch) -> torch.Tensor:
        """keep [B, T]: every real prompt token but the dropped patch tokens (per row, all but the top
        round(n (1 - R)) by score; ties to the lower position)."""
        candidates = batch.visual_mask & ~_newlines(batch)
        keep = batch.attention_mask.bool().clone()
        for row in range(scores.shape[0]):
            patches = torch.nonzero(candidates[row]).squeeze(1)
            order = torch.sort(scores[row, patches], descending=True, stable=True).indices
            keep[row, patches[order[self.config.kept(patches.numel()):]]] = False
        return keep

    # -- prefill
    def prefill(self, batch: SplicedBatch, cache=None, keep: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, Pruning]:
        """Every layer on `batch` (appending to `cache` if given): the last layer's output [B, T', d] (before the
        final norm) and the pruning. `keep` [B, T] fixes the kept tokens instead of ranking them."""
        from transformers.masking_utils import create_causal_mask

        lm, k = self.lm, self.config.k
        h, attention_mask, position_ids = batch.inputs_embeds, batch.attention_mask, batch.position_ids
        # layers 0..k-1: exactly what the host's forward builds for this batch
        mask = create_causal_mask(config=lm.config, inputs_embeds=h, attention_mask=attention_mask,
                                  past_key_values=cache, position_ids=position_ids)
        rotary = lm.rotary_emb(h, position_ids)
        scores = None
        for layer_idx in range(k):
            if layer_idx == k - 1 and keep is None:
                scores = self.attention_scores(layer_idx, h, rotary, attention_mask)
            h = lm.layers[layer_idx](h, attention_mask=mask, position_embeddings=rotary, position_ids=position_ids,
                                     past_key_values=cache, use_cache=cache is not None)
        pruning = Pruning.from_keep(self.select(scores, batch) if keep is None else keep, batch)
        # layers k..L-1 on the pruned prompt, original positions
        h = pruning.gather(h)
        mask = create_causal_mask(config=lm.config, inputs_embeds=h, attention_mask=pruning.attention_mask,
                                  past_key_values=cache, position_ids=pruning.position_ids, layer_idx=k)
        rotary = lm.rotary_emb(h, pruning.position_ids)
        for layer_idx in range(k, len(lm.layers)):
            h = lm.layers[layer_idx](h, attention_mask=mask, position_embeddings=rotary,
                                     position_ids=pruning.position_ids, past_key_values=cache,
                                     use_cache=cache is not None)
        return h, pruning

    def forward(self, batch: SplicedBatch, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, Pruning]:
        """Prefill without a cache: the final hidden states [B, T', d] (normed) of the pruned prompt."""
        h, pruning = self.prefill(batch, None, keep)
        return self.lm.norm(h), pruning

    # -- generation
    @torch.no_grad()
    def generate(self, batch: SplicedBatch, max_new_tokens: int | Sequence[int], eos_token_id,
                 stop_strings=None, decode=None, use_cache: bool = True) -> FastVOutput:
        """Greedy answers for a left-padded batch (arguments as `StoppingCriteria.for_batch`). use_cache=False:
        the reference, the pruned model recomputed from scratch for every token with the prefill's kept tokens."""
        stopping = StoppingCriteria.for_batch(batch.inputs_embeds.shape[0], max_new_tokens, eos_token_id,
                                              stop_strings, decode)
        rows, pruning = (self._generate_cached if use_cache else self._generate_uncached)(batch, stopping)
        return FastVOutput(token_ids=rows.generated, finish_reasons=rows.finish_reasons,
                           prefill_tokens=batch.inputs_embeds.shape[1], patch_tokens_after=pruning.patch_tokens,
                           visual_tokens_after=pruning.visual_tokens)

    def _logits_last(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, vocab] of the last position (normed over every position, as the host's forward)."""
        return self.model.lm_head(self.lm.norm(h)[:, -1])

    def _generate_cached(self, batch: SplicedBatch, stopping: StoppingCriteria) -> tuple[GreedyRows, Pruning]:
        from transformers import DynamicCache
        from transformers.masking_utils import create_causal_mask

        lm, k = self.lm, self.config.k
        cache = DynamicCache(config=lm.config)
        h, pruning = self.prefill(batch, cache)
        logits = self._logits_last(h)
        full_mask, pruned_mask = batch.attention_mask, pruning.attention_mask  # layers < k, layers >= k
        next_position = batch.position_ids[:, -1:] + 1
        embed = self.model.get_input_embeddings()
        rows = GreedyRows(stopping)
        while not rows.append(next_ids := logits.argmax(dim=-1)):
            ones = full_mask.new_ones(full_mask.shape[0], 1)
            full_mask, pruned_mask = torch.cat([full_mask, ones], dim=1), torch.cat([pruned_mask, ones], dim=1)
            x = embed(next_ids[:, None])  # [B, 1, d]
            # the host's decode mask, sized by each group's own cache (layer 0: whole prompt, layer k: pruned)
            early, late = (create_causal_mask(config=lm.config, inputs_embeds=x, attention_mask=keys,
                                              past_key_values=cache, position_ids=next_position, layer_idx=first)
                           for keys, first in ((full_mask, 0), (pruned_mask, k)))
            rotary = lm.rotary_emb(x, next_position)
            for layer_idx, layer in enumerate(lm.layers):
                x = layer(x, attention_mask=early if layer_idx < k else late, position_embeddings=rotary,
                          position_ids=next_position, past_key_values=cache, use_cache=True)
            logits = self._logits_last(x)
            next_position = next_position + 1
        return rows, pruning

    def _generate_uncached(self, batch: SplicedBatch, stopping: StoppingCriteria) -> tuple[GreedyRows, Pruning]:
        embed = self.model.get_input_embeddings()
        rows = GreedyRows(stopping)
        h, first = self.prefill(batch)
        keep = first.keep
        while not rows.append(next_ids := self._logits_last(h).argmax(dim=-1)):
            B = next_ids.shape[0]
            batch = SplicedBatch(
                inputs_embeds=torch.cat([batch.inputs_embeds, embed(next_ids[:, None])], dim=1),
                attention_mask=torch.cat([batch.attention_mask, batch.attention_mask.new_ones(B, 1)], dim=1),
                position_ids=torch.cat([batch.position_ids, batch.position_ids[:, -1:] + 1], dim=1),
                visual_mask=torch.cat([batch.visual_mask, batch.visual_mask.new_zeros(B, 1)], dim=1),
                newline_mask=torch.cat([_newlines(batch), batch.visual_mask.new_zeros(B, 1)], dim=1),
            )
            keep = torch.cat([keep, keep.new_ones(B, 1)], dim=1)
            h, _ = self.prefill(batch, keep=keep)
        return rows, first


# ----------------------------------------------------------------------------------------------------------
# the runner and its per-sample record


@dataclass
class FastVSampleRecord(SampleRecord):
    fastv_k: int = 0  # layers 0..k-1 saw every visual token, layers k.. the kept ones
    visual_tokens_after_k: int = 0  # patch tokens kept from layer k on
    llm_visual_tokens_after_k: int = 0  # the same with the newline tokens
    visual_per_layer: tuple[int, ...] = ()  # visual tokens (newlines included) in each LLM layer's sequence


class FastVRunner(VisionLanguageRunner):
    """`VisionLanguageRunner` whose LLM runs FastV: every visual token enters the LLM (no reducer), the pruning
    happens inside it."""

    def __init__(self, loaded: LoadedCheckpoint, fastv: FastV, device: str = "cpu"):
        super().__init__(loaded, FullTokens(), device)
        self.fastv = fastv

    def decode(self, batch, max_new_tokens, until) -> FastVOutput:
        return self.fastv.generate(batch, max_new_tokens, eos_token_ids(self.loaded.tokenizer, self.model),
                                   stop_strings=until, decode=self.decode_text)

    def record(self, row, fields, decoded: FastVOutput) -> FastVSampleRecord:
        before, after = fields["visual_tokens_kept"] + fields["newline_tokens_kept"], decoded.visual_tokens_after[row]
        return FastVSampleRecord(**fields, fastv_k=self.fastv.config.k,
                                 visual_tokens_after_k=decoded.patch_tokens_after[row], llm_visual_tokens_after_k=after,
                                 visual_per_layer=self.fastv.visual_per_layer(before, after))
