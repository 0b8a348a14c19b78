"""PruMerge and PruMerge+ (Shang et al., LLaVA-PruMerge, arXiv 2403.15388, ICCV 2025) as a `TokenReducer`.

PruMerge reduces every crop's visual tokens before the projector, without looking at the text:

1. *Prune*: keep the patches whose attention from the vision encoder's CLS token is an outlier of the crop's
   distribution by the interquartile rule, score > Q3 + 1.5 x (Q3 - Q1). Their number adapts to the image.
2. *PruMerge+* adds spatially uniform samples to the outliers (coverage of what the CLS token ignores).
3. *Merge*: every kept token absorbs the encoder outputs of the tokens whose keys are most similar to its own,
   weighted by their CLS attention; the projector then runs on the merged tokens only.

Sources. The paper's body was not at hand: what it says is taken from its abstract (arXiv 2403.15388:
CLS-attention sparsity picks the tokens to keep, "we cluster the selected (unpruned) tokens based on their key
similarity and merge" the others into them, 14.4x compression on average on LLaVA-1.5) and a secondary summary
(en.papernotes.org, ICCV 2025 notes: IQR outlier detection, k-nearest-neighbour clustering by key similarity,
attention-weighted averaging, about 5.5% of LLaVA-1.5's 576 tokens kept). Every number below is read in the
official code, github.com/42Shawn/LLaVA-PruMerge at commit 097c041 (2025-06-28),
`llava/model/multimodal_encoder/clip_encoder.py` (`outlier_dectection`, `token_prune_merge_advanced` = PruMerge,
`token_prune_merge_advanced_plus` = PruMerge+, which `forward` calls with `if_adaptive=True`; LLaVA-1.5, CLIP
ViT-L/14-336, one 24 x 24 crop), and in the port HiRED's authors used for their comparison,
github.com/hasanar1f/HiRED `prumerge_llava_next.py` (commit 42be984):

- *Layer and attention.* Forward hooks on `encoder.layers[23].self_attn.q_proj / k_proj`, the *last* of the 24
  layers, whose input is `hidden_states[-2]`, the penultimate layer's output that LLaVA's projector reads
  (the paper's "penultimate layer"). The attention is one softmax over the *full-width* q and k (heads neither
  split nor averaged): softmax(q k^T x d^-1/2), d = 1024 the hidden size, i.e. the per-head logits summed over
  heads and scaled by 1/sqrt(d) instead of 1/sqrt(d_head). The score is its CLS row over the patches (the
  softmax runs over all 577 keys, CLS included).
- *Outliers.* `np.percentile` quartiles (linear interpolation) of the 576 scores, outliers strictly above
  Q3 + 1.5 IQR (the lower fence is commented out); the code keeps the top int(576 x ratio) = their count.
- *PruMerge+ samples* (the adaptive branch): with o outliers, step = int(576 / o) and the raster indices
  0, s, 2s, ... < 575 with s = int(step / 3), those that are not outliers, are added: about 3 o samples, so
  PruMerge+ keeps about 4 x PruMerge (e.g. o = 32: s = 6, 96 samples on columns 0, 6, 12, 18 of every row,
  at most 128 tokens, 22%, plus the extra one). The raster stride is a grid only when s divides the 24-patch
  row (otherwise a sheared lattice). Earlier commits used s = step / 3 from step / 6 and s = step / 4.
- *Merge.* Keys: the same layer's `k_proj` output (full width, CLS dropped), L2-normalised. Each kept token i
  takes its 32 most similar tokens by cosine among *all other* tokens of the crop (kept ones included) and
  becomes x_i + sum_j a_j x_j: the CLS attention a_j weights an un-normalised sum (the division by sum_j a_j is
  commented out), added to the token itself; x is the encoder output the projector reads
  (`hidden_states[-2]`, CLS dropped). One extra token, sum_j a_j x_j over all pruned tokens, follows the kept
  ones. The LLM gets, per crop: outliers in descending score, then samples in raster order, then the extra
  token; each through the projector.
- *AnyRes (HiRED's port, LLaVA-NeXT).* Every crop (base image and each sub-image, padding included) is reduced
  on its own, as above, and the crops' tokens are concatenated (base first) without un-padding or newlines.
- Degenerate cases the official code does not handle: no outlier (1/0), s = 0 (more than a third outliers),
  fewer than 33 tokens in a crop (top-32 of fewer).

HiRED's paper (arXiv 2408.10945) compares against both at their own, adaptive counts (about 10% and 55% of
LLaVA-NeXT-13B's tokens in its DocVQA comparison), not at equal budget.

What this module does, and why it differs:
- Two modes, an explicit setting. `mode="budget"` (the default; this is how the project compares PruMerge+ with
  HiRED at equal budget): a sample keeps exactly floor(budget x its patch tokens) (at least one), split over its
  crops in proportion to their present tokens as VisionZip splits it (`visionzip.crop_budgets`). A crop with
  quota q < its n tokens keeps q - 1 selected tokens plus the extra token: the outliers by score (at most
  q - 1), then (PruMerge+) spatially uniform samples among the other tokens, every (R / m)-th of the R others in
  raster order, to fill q - 1 (`uniform_samples`); plain PruMerge fills with the next-highest scores (budget
  PruMerge is top-k by CLS attention). q = n keeps the crop as it is; q = 0 drops it. `mode="adaptive"` is the
  paper's and the official code's: per crop, the outliers and (PruMerge+) the official raster samples
  (`official_samples`), plus the extra token; the count is whatever the image gives, recorded per sample
  (`PruMergeAllocation`), so HiRED is compared at the matched FLOPs.
- Candidates are the tokens present after transformers' packing (un-padding; OneVision's anyres_max
  interpolation, where a token stands for its nearest patch: its score and key), as VisionZip's; the IQR and
  the official stride use the crop's present count n for 576. At least one outlier is kept (the top score) and
  the stride is at least 1. Each crop's neighbours are min(neighbours, n - 1).
- Position: kept tokens stay where the packing put them (a merged token at its own position) and LLaVA's
  row-newline tokens stay in place, uncounted, as the project's other reducers do; a crop's extra token follows
  its last packed token, marked `patch_index == SUMMARY`. It counts as one of the crop's tokens.
- A crop that prunes nothing is not merged (the official code, which never runs at 100%, would add neighbours to
  every token), so budget 1.0 is the base model bit for bit.
- Merging runs in float32 on the packed encoder outputs (`pack_crop_features`), then the merged and extra
  tokens go through the projector once more (it also ran on every patch in the shared `encode_images`).
  `merge="mean"` replaces the official un-normalised sum by the attention-weighted mean of the token and its
  neighbours, (a_i x_i + sum_j a_j x_j) / (a_i + sum_j a_j), and the extra token by the weighted mean of the
  pruned tokens: the paper's "weighted averaging", as an ablation.
- CLS-free encoders (SigLIP in LLaVA-OneVision): `score="mean_received"`, the same full-width attention's mean
  over the patch queries (the substitute HiRED's module explains). The layer is the one after the layer that
  feeds the projector; where the projector reads the last layer (OneVision), the last layer itself.
- Ties: top-k by score prefers the lower raster position; the most similar neighbours the lower position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from visor_model.efficiency.accounting import Overhead, SampleTokens
from visor_model.efficiency.flops import FlopTerms
from visor_model.efficiency.shapes import LlavaShape, VisionShape
from visor_model.efficiency.shapes import check_count as _count
from visor_model.llava.visual import ImageTokens, VisionOutputs, pack_crop_features, select_vision_features
from visor_model.methods.base import EncoderScoring, ModelResolvedReducer, check_budget, check_integer
from visor_model.methods.encoder import (
    attention_queries_keys,
    encoder_has_cls,
    encoder_layers,
    feature_layer,
    resolve_score,
)
from visor_model.methods.hired import (
    SCORES,
    is_auto,
    top_k_mask,
)
from visor_model.methods.visionzip import crop_budgets

MODES = ("budget", "adaptive")
VARIANTS = ("plus", "prumerge")  # PruMerge+ (outliers + spatial samples), PruMerge (outliers only)
MERGES = ("official", "mean")
NEIGHBOURS = 32  # the official code's k
SUMMARY = -2  # patch_index of a crop's extra token (the attention-weighted sum of its pruned tokens)


@dataclass(frozen=True)
class PruMergeSettings(EncoderScoring):
    """Settings of PruMerge / PruMerge+. `None` fields are derived from the model by `resolve`.

    mode:       "budget" (exactly floor(budget x patch tokens) per sample) or "adaptive" (the paper's IQR count)
    budget:     fraction in (0, 1] of the sample's patch tokens; required in budget mode, None in adaptive mode
    variant:    "plus" (PruMerge+: outliers + spatially uniform samples) or "prumerge" (outliers only)
    score:      "cls" (CLS->patch attention) or "mean_received" (CLS-free encoders); None: "cls" if the encoder
                has a CLS token
    layer:      encoder layer whose q, k give the scores and keys; None: the layer after the one feeding the
                projector (the official layer 23 of 24), or the last layer when the projector reads it
    neighbours: tokens each kept token merges (the official 32), >= 1
    merge:      "official" (x_i + sum_j a_j x_j) or "mean" (attention-weighted mean; an ablation)
    """

    mode: str = "budget"
    budget: float | None = None
    variant: str = "plus"
    score: str | None = None
    layer: int | None = None
    neighbours: int = NEIGHBOURS
    merge: str = "official"

    def __post_init__(self):
        def set_(name, value):  # the dataclass is frozen
            object.__setattr__(self, name, value)

        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "budget":
            if self.budget is None:
                raise ValueError("budget mode needs a budget in (0, 1] (or mode='adaptive' for the paper's count)")
            set_("budget", check_budget(self.budget))
        elif self.budget is not None:
            raise ValueError(f"adaptive mode keeps the IQR count and takes no budget, got budget={self.budget!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        set_("score", None if is_auto(self.score) else self.score)
        if self.score is not None and self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES} (or None for the encoder's default), got {self.score!r}")
        if is_auto(self.layer):
            set_("layer", None)
        else:
            set_("layer", check_integer(self.layer, "layer"))
            if self.layer < 0:
                raise ValueError(f"layer must be >= 0, got {self.layer}")
        set_("neighbours", check_integer(self.neighbours, "neighbours"))
        if self.neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {self.neighbours}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")

    def resolve(self, model) -> PruMergeSettings:
        """Fill `score` and `layer` from `model` and check them against its vision encoder."""
        score = resolve_score(model, self.score)
        n_layers = len(encoder_layers(model))
        layer = self.layer if self.layer is not None else min(feature_layer(model) + 1, n_layers - 1)
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer must be in [0, {n_layers - 1}] for this {n_layers}-layer encoder, got {layer}")
        return replace(self, score=score, layer=layer)

    full_images = 0  # one scoring layer, on every crop

    def overhead_flops(self, shape: LlavaShape, tokens: SampleTokens, causal_mode: str = "causal") -> Overhead:
        """The scoring layer's attention scores on every crop (`EncoderScoring`), the merge's key comparisons and
        weighted sums (`merge_work`, `merge_flops`, terms "merge.*") and the merged and extra tokens projected once
        more, of resolved settings (`resolve`). Budget mode only: the adaptive counts depend on each crop's scores,
        which the sample record does not carry."""
        if self.mode != "budget":
            raise ValueError("adaptive PruMerge's merge FLOPs need each crop's selected-token count "
                             "(PruMergeAllocation), which the sample record (SampleTokens) does not carry; "
                             "FLOPs are computable in budget mode only")
        if tokens.crop_patches is None:
            raise ValueError("PruMerge's merge FLOPs need the sample's crop_patches (SampleTokens.from_record)")
        selected, extra = budget_split(tokens.crop_patches, self.budget)
        pairs, summed, reprojected = merge_work(tokens.crop_patches, selected, extra, self.neighbours)
        scores = super().overhead_flops(shape, tokens, causal_mode)
        return Overhead(selection=scores.selection + merge_flops(shape.vision, pairs, summed).prefixed("merge."),
                        projector_tokens=reprojected)


# ----------------------------------------------------------------------------------------------------------
# pure functions: scores, selection, merge, and the work they imply (tested directly)
# ----------------------------------------------------------------------------------------------------------


def full_width_scores(q: torch.Tensor, k: torch.Tensor, score: str, has_cls: bool) -> torch.Tensor:
    """The official attention: one softmax over the full-width q k^T / sqrt(d), d = H x d_h (heads concatenated).

    q, k: [c, H, seq, d_h] (`hired.attention_queries_keys`). returns [c, P] float32:
      "cls":           softmax(q_cls k^T / sqrt(d))[patches]
      "mean_received": mean over patch queries i of softmax(q_i k^T / sqrt(d))[patches]
    """
    c, heads, seq, head_dim = q.shape
    q = q.transpose(1, 2).reshape(c, seq, heads * head_dim)  # [c, seq, d]
    k = k.transpose(1, 2).reshape(c, seq, heads * head_dim)
    first = int(has_cls)
    queries = q[:, :1] if score == "cls" else q[:, first:]  # [c, 1 or P, d]
    probs = (queries @ k.transpose(-1, -2) / math.sqrt(heads * head_dim)).softmax(dim=-1)  # [c, 1 or P, seq]
    return probs[..., first:].mean(dim=1)  # [c, P]


def iqr_outliers(scores: torch.Tensor) -> torch.Tensor:
    """[n] bool: scores strictly above Q3 + 1.5 (Q3 - Q1), quartiles by linear interpolation (numpy's default)."""
    values = scores.detach().double().cpu()
    q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist()
    return values > q3 + 1.5 * (q3 - q1)


def official_samples(n: int, n_outliers: int) -> torch.Tensor:
    """PruMerge+'s adaptive samples among n raster positions: 0, s, 2s, ... < n - 1 with s = (n // o) // 3
    (the official int(int(1 / (o / 576)) / 3), exact in integers; o and s at least 1)."""
    stride = max(1, (n // max(1, n_outliers)) // 3)
    return torch.arange(0, max(0, n - 1), stride)


def uniform_samples(n: int, m: int) -> torch.Tensor:
    """m positions spread evenly over n (budget mode): floor(i n / m), i < m; every (n / m)-th when m divides n."""
    m = max(0, min(int(m), n))
    return torch.arange(m) * n // m if m else torch.zeros(0, dtype=torch.long)


def select_crop(scores: torch.Tensor, variant: str, quota: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(outliers, samples) [n] bool of one crop whose n present tokens have `scores` (raster order).

    quota None (adaptive): the IQR outliers (at least the top score) and, for "plus", `official_samples` that
    are not outliers. quota q (budget; q - 1 tokens are selected, the extra token is the q-th): the top
    min(outliers, q - 1) by score, then "plus" adds `uniform_samples` among the rest, "prumerge" the next
    scores, to q - 1 selected; q >= n selects every token (nothing is merged)."""
    n = scores.numel()
    if quota is not None and quota >= n:
        return torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    n_outliers = max(1, int(iqr_outliers(scores).sum()))
    slots = n if quota is None else max(0, quota - 1)
    outliers = top_k_mask(scores, min(n_outliers, slots))  # the outliers: the top scores, ties to lower positions
    samples = torch.zeros(n, dtype=torch.bool)
    if quota is None:
        if variant == "plus":
            samples[official_samples(n, n_outliers)] = True
            samples &= ~outliers
        return outliers, samples
    rest = torch.nonzero(~outliers).squeeze(1)
    fill = slots - int(outliers.sum())
    if variant == "plus":
        samples[rest[uniform_samples(rest.numel(), fill)]] = True
    else:
        samples[rest[top_k_mask(scores[rest], fill)]] = True
    return outliers, samples


def merge_tokens(x: torch.Tensor, keys: torch.Tensor, scores: torch.Tensor, kept: torch.Tensor, neighbours: int,
                 rule: str = "official") -> tuple[torch.Tensor, torch.Tensor]:
    """The merged kept tokens and the extra token of one crop (float32).

    x: [n, d_in] encoder outputs; keys: [n, d_k] L2-normalised; scores: [n] the attention weights a; kept: [n]
    bool, at least one token pruned. Each kept token i takes the min(neighbours, n - 1) other tokens j (kept or
    not) with the most similar keys (cosine; ties: lower position):
      "official": x_i + sum_j a_j x_j,  extra = sum_{j pruned} a_j x_j
      "mean":     (a_i x_i + sum_j a_j x_j) / (a_i + sum_j a_j),  extra = the a-weighted mean of the pruned
    returns ([n_kept, d_in], [d_in])
    """
    x, a = x.float(), scores.to(x.device).float()
    kept = kept.to(x.device)
    n = x.shape[0]
    similarity = keys[kept].float() @ keys.float().T  # [n_kept, n]
    rows = torch.arange(int(kept.sum()), device=x.device)
    similarity[rows, torch.nonzero(kept).squeeze(1)] = -math.inf  # not its own neighbour
    k = min(int(neighbours), n - 1)
    order = torch.argsort(-similarity, dim=1, stable=True)[:, :k]  # [n_kept, k] (stable: ties to lower positions)
    weights = a[order]  # [n_kept, k]
    gathered = (weights[..., None] * x[order]).sum(dim=1)  # [n_kept, d_in]
    pruned = ~kept
    extra = (a[pruned, None] * x[pruned]).sum(dim=0)  # [d_in]
    if rule == "mean":
        own = a[kept]
        merged = (own[:, None] * x[kept] + gathered) / (own + weights.sum(dim=1))[:, None]
        return merged, extra / a[pruned].sum()
    return x[kept] + gathered, extra


def crop_quotas(present: Sequence[int], budget: float) -> list[int]:
    """Budget mode: tokens each crop of a sample whose crops hold `present` tokens sends to the LLM, summing to
    tokens_for_budget(budget, sum(present)) (`visionzip.crop_budgets`: proportional, largest remainders)."""
    return [d for d, _ in crop_budgets(present, budget, 1.0)]


def budget_split(present: Sequence[int], budget: float) -> tuple[list[int], list[int]]:
    """Budget mode: (selected, extra) per crop. A crop's quota q is q selected tokens when q is all of it (no
    merge), else q - 1 selected plus the extra token."""
    quotas = crop_quotas(present, budget)
    extra = [int(0 < q < p) for q, p in zip(quotas, present)]
    return [q - e for q, e in zip(quotas, extra)], extra


def merge_work(present: Sequence[int], selected: Sequence[int], extra: Sequence[int], neighbours: int = NEIGHBOURS
               ) -> tuple[int, int, int]:
    """(key comparisons, weighted vectors summed, tokens re-projected) of one sample. A crop that merges (extra
    token) with p present and s selected tokens compares each selected key with the p - 1 others (s (p - 1)
    full-width cosines), sums min(neighbours, p - 1) weighted vectors per selected token and its p - s pruned
    ones into the extra token, and projects its s + 1 merged tokens again."""
    pairs = summed = projected = 0
    for p, s, e in zip(present, selected, extra):
        if e:
            pairs += s * (p - 1)
            summed += s * min(neighbours, p - 1) + (p - s)
            projected += s + 1
    return pairs, summed, projected


def merge_flops(vshape: VisionShape, pairs: int, summed: int) -> FlopTerms:
    """The merge's `pairs` full-width key cosines (one d-dim dot product each, d the encoder's hidden size: the
    official keys are not split into heads) and its `summed` attention-weighted encoder outputs (a multiply and
    an add per element, d each). The key normalisation, the top-k and the weights' gathering are not counted; the
    scores are `attention_score_flops` on the scoring layer, the re-projection the projector's."""
    pairs = _count("pairs", pairs, allow_zero=True)
    summed = _count("summed", summed, allow_zero=True)
    return FlopTerms.of({"similarity": 2 * pairs * vshape.hidden, "weighted_sum": 2 * summed * vshape.hidden})


# ----------------------------------------------------------------------------------------------------------
# the reducer
# ----------------------------------------------------------------------------------------------------------


@dataclass
class PruMergeAllocation:
    """Accounting of one sample, per crop (0 = base image, k = k-th sub-image)."""

    present: list[int]  # patch tokens present after packing
    outliers: list[int]  # selected as outliers (budget mode: at most the quota - 1)
    samples: list[int]  # selected as spatial samples (PruMerge+) or next scores (budget-mode PruMerge)
    extra: list[int]  # 1 where the crop merged and got its extra token

    @property
    def kept(self) -> list[int]:
        """Tokens of each crop that enter the LLM."""
        return [o + s + e for o, s, e in zip(self.outliers, self.samples, self.extra)]


class PruMerge(ModelResolvedReducer):
    """PruMerge / PruMerge+; see the module docstring. `reduce_with_allocations` also returns each sample's
    per-crop counts."""

    name = "prumerge"

    def __init__(self, mode: str = "budget", budget: float | None = None, variant: str = "plus",
                 score: str | None = None, layer: int | None = None, neighbours: int = NEIGHBOURS,
                 merge: str = "official", model=None):
        self.config = PruMergeSettings(mode, budget, variant, score, layer, neighbours, merge)
        self._resolved: tuple[int, PruMergeSettings] | None = None
        if model is not None:
            self.bind(model)

    def settings(self) -> dict:
        config = self._resolved[1] if self._resolved is not None else self.config

        def auto(value):
            return "auto" if value is None else value

        return {"method": self.name, "mode": config.mode, "budget": config.budget, "variant": config.variant,
                "score": auto(config.score), "layer": auto(config.layer), "neighbours": config.neighbours,
                "merge": config.merge}

    def reduce(self, model, vision: VisionOutputs, sample_keys: list[str]) -> list[ImageTokens]:
        return self.reduce_with_allocations(model, vision, sample_keys)[0]

    @torch.no_grad()
    def reduce_with_allocations(self, model, vision: VisionOutputs, sample_keys: list[str]
                                ) -> tuple[list[ImageTokens], list[PruMergeAllocation]]:
        config = self.resolved(model)
        if vision.hidden_states is None:
            raise ValueError("PruMerge needs the tower's hidden states: encode_images(..., return_hidden_states=True)")
        scores, keys = self.scores_and_keys(model, vision, config)
        counts = torch.bincount(vision.crop_owner.cpu(), minlength=len(vision.images))  # [B] crops per image
        first_crop = (torch.cumsum(counts, 0) - counts).tolist()
        encoder_out = None  # the packed encoder outputs, made when something is merged
        plans, allocations, merges = [], [], []  # merges: (image, kept positions [s], extra anchor, [s + 1, d_in])
        for b, image in enumerate(vision.images):
            partition, patch = image.partition.cpu(), image.patch_index.cpu()
            present = image.crop_patches(int(counts[b]))
            quotas = crop_quotas(present, config.budget) if config.mode == "budget" else [None] * len(present)
            keep = image.is_newline.cpu().clone()  # every newline stays
            allocation = PruMergeAllocation(list(present), [0] * len(present), [0] * len(present), [0] * len(present))
            for j, quota in enumerate(quotas):
                crop = first_crop[b] + j
                members = torch.nonzero(partition == j).squeeze(1)  # packed positions of crop j's tokens
                members = members[torch.argsort(patch[members], stable=True)]  # in the crop's raster order
                if members.numel() == 0 or quota == 0:
                    continue
                crop_scores = scores[crop][patch[members]]
                outliers, samples = select_crop(crop_scores, config.variant, quota)
                selected = outliers | samples
                keep[members[selected]] = True
                allocation.outliers[j], allocation.samples[j] = int(outliers.sum()), int(samples.sum())
                if bool(selected.all()):
                    continue  # nothing pruned: nothing to merge
                if encoder_out is None:
                    encoder_out = pack_crop_features(model, vision, select_vision_features(model, vision.hidden_states))
                merged, extra = merge_tokens(encoder_out[b][members.to(encoder_out[b].device)],
                                             keys[crop][patch[members].to(keys.device)], crop_scores, selected,
                                             config.neighbours, config.merge)
                merges.append((b, j, members[selected], int(members.max()), torch.cat([merged, extra[None]])))
                allocation.extra[j] = 1
            plans.append(keep)
            allocations.append(allocation)
        return self.assemble(model, vision, plans, merges), allocations

    @staticmethod
    def scores_and_keys(model, vision: VisionOutputs, config: PruMergeSettings) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's per-patch `score` [n_crops, P] (CPU) and full-width keys, L2-normalised, [n_crops, P, d_v]."""
        has_cls = encoder_has_cls(model)
        first = int(has_cls)
        hidden = vision.hidden_states[config.layer]  # [n_crops, seq, d_v], the input of `layer`
        n_patches = vision.images[0].patches_per_side ** 2
        if hidden.shape[1] != n_patches + first:
            raise ValueError(f"encoder sequence of {hidden.shape[1]} tokens != {n_patches} patches + {first} CLS")
        scores, keys = [], []
        for start in range(0, hidden.shape[0], 4):  # bounded memory, as hired.attention_scores
            q, k = attention_queries_keys(encoder_layers(model)[config.layer], hidden[start : start + 4])
            scores.append(full_width_scores(q, k, config.score, has_cls).cpu())  # [c, P]
            keys.append(k.transpose(1, 2).flatten(2)[:, first:])  # [c, P, d_v]
        keys = torch.cat(keys)
        return torch.cat(scores), keys / keys.norm(dim=-1, keepdim=True)

    @staticmethod
    def assemble(model, vision: VisionOutputs, keeps: list[torch.Tensor], merges) -> list[ImageTokens]:
        """Every image's kept tokens in packed order, its merged tokens projected in place and each merging crop's
        extra token right after the crop's last packed token (one projector call for the batch)."""
        projected = None
        if merges:
            projector = model.model.multi_modal_projector
            dtype = next(projector.parameters()).dtype
            projected = projector(torch.cat([vectors for *_, vectors in merges]).to(dtype))  # [sum (s + 1), d]
        out, start = [], 0
        by_image: dict[int, list] = {}
        for b, j, positions, anchor, vectors in merges:
            rows = projected[start : start + len(vectors)]
            by_image.setdefault(b, []).append((j, positions, anchor, rows))
            start += len(vectors)
        for b, (image, keep) in enumerate(zip(vision.images, keeps)):
            features = image.features
            extras = []
            for j, positions, anchor, rows in by_image.get(b, []):
                if features is image.features:
                    features = features.clone()
                features[positions.to(features.device)] = rows[:-1].to(features.dtype)
                extras.append((j, anchor, rows[-1].to(features.dtype)))
            kept = torch.nonzero(keep).squeeze(1)  # [k] packed positions, ascending
            order_key = kept.double()
            partition, patch_index = image.partition[kept.to(image.partition.device)], image.patch_index[
                kept.to(image.partition.device)]
            rows = features[kept.to(features.device)]
            if extras:
                order_key = torch.cat([order_key, torch.tensor([a + 0.5 for _, a, _ in extras], dtype=torch.float64)])
                rows = torch.cat([rows, torch.stack([r for *_, r in extras])])
                partition = torch.cat([partition, torch.tensor([j for j, *_ in extras], device=partition.device)])
                patch_index = torch.cat([patch_index, torch.full((len(extras),), SUMMARY, device=partition.device)])
            order = torch.argsort(order_key, stable=True)
            out.append(ImageTokens(rows[order.to(rows.device)], partition[order.to(partition.device)],
                                   patch_index[order.to(partition.device)], image.grid, image.patches_per_side))
        return out
