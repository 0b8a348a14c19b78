"""VisionZip (Yang et al., arXiv 2412.04467, CVPR 2025) as a `TokenReducer`.

VisionZip keeps, per crop (the AnyRes base image and every sub-image), a few *dominant* tokens and a few
*contextual* tokens, before the LLM and without looking at the text:

1. *Dominant*: the patches the vision encoder's CLS token attends to most, at the layer whose output LLaVA's
   projector reads (the "feature layer"), attention summed over heads.
2. *Contextual*: the remaining patches are merged. Target tokens are picked evenly among them (every
   max(1, R // C)-th of the R remaining patches in raster order, the first C); every other remaining patch is
   assigned to the target whose key is most similar (the feature layer's keys averaged over heads,
   L2-normalised: cosine), and a contextual token is its target plus the mean of the patches assigned to it.

`budget` is the fraction of the sample's patch tokens that enter the LLM, dominant + contextual;
`dominant_ratio` the dominant share of each crop's tokens (default 54 / 64 = 0.84375, the share of every
official LLaVA setting: 54 + 10 of 64, 108 + 20 of 128, 162 + 30 of 192 tokens).

What the official code does (github.com/dvlab-research/VisionZip, `visionzip/clip_encoder.py`, `utils.py`,
`llava_arch.py` at commit 3151f6d; LLaVA-1.5 / LLaVA-NeXT with CLIP only, there is no SigLIP path):
- scores: `output_attentions` of layer -2 (layer 22 of 24, whose output `mm_vision_select_layer=-2` feeds the
  projector), the CLS row summed over heads; the keys of the same layer, averaged over heads, normalised;
- `dominant` counts the CLS token: "54 dominant" are the CLS token and the top 53 patches;
- the contextual token is `target + mean(assigned)`, not a mean that includes the target (a target nothing is
  assigned to stays itself): when its tokens resemble their target, it is about twice as long as a patch's
  vector. `merge="mean"` (the mean of the target and its tokens) is an ablation of this choice; the default is
  the official code's;
- merging happens on the encoder output (`hidden_states[-2]`, before the projector), and the projector then
  runs on the kept tokens only;
- AnyRes: every crop is reduced to dominant + contextual tokens before packing, over all of its patches
  (no un-padding: padding patches can be kept); the LLM gets the base crop's [CLS, dominant in score order,
  contextual], then the sub-images' dominant tokens in canvas raster order without newline tokens, then the
  sub-images' CLS tokens, then all their contextual tokens.

The paper's text was not at hand when this was written; the official code is followed (its numbers come
from it), and every departure below is ours, for the stated reason.

What this module does, and why it differs:
- Budgets count patch tokens only; no CLS token enters the LLM (transformers' LLaVA-NeXT drops it,
  `vision_feature_select_strategy="default"`), so the dominant tokens are all patches.
- Candidates are the tokens present after transformers' packing (un-padding; LLaVA-OneVision's anyres_max
  interpolation), so budgets are exact: the sample keeps floor(budget x its patch tokens) (at least one),
  split over its crops in proportion to their present tokens (largest remainders, ties to the lower crop),
  each crop's share split round(dominant_ratio x n) dominant + the rest contextual (`crop_budgets`).
- Position: every kept token stays where the packing put it, a contextual token at its target's position;
  LLaVA's row-newline tokens are kept in place and not counted, as the project's other reducers do. With this
  order, budget 1.0 (every remaining patch is a target, nothing is merged) is the base model bit for bit.
- Merged tokens are new vectors made as in the official code, on the encoder output the projector reads
  (packed exactly like the projector outputs, `pack_crop_features`, so an interpolated OneVision token merges
  its interpolated encoder output), then projected. The projector also runs on every patch before (the shared
  `encode_images`), and the contextual tokens of a crop that merges anything run through it once more; the
  FLOP record counts both (`visor_model.efficiency.accounting`). Merging runs in float32.
- CLS-free encoders (SigLIP in LLaVA-OneVision): `score="mean_received"`, the attention a patch receives
  averaged over all patch queries and summed over heads, the substitute HiRED's module documents and computes
  (`visor_model.methods.hired.scores_from_queries_keys`); `settings()` records the score of every result.
- Ties: dominant top-k prefers the lower patch index, a merge token's most similar target the earlier target.
- Interpolated OneVision tokens stand for their nearest patch (`encode_images`): its score and its key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from visor_model.efficiency.accounting import Overhead, SampleTokens
from visor_model.efficiency.flops import FlopTerms
from visor_model.efficiency.shapes import LlavaShape, VisionShape
from visor_model.efficiency.shapes import check_count as _count
from visor_model.llava.visual import ImageTokens, VisionOutputs, pack_crop_features, select_vision_features
from visor_model.methods.base import (
    EncoderScoring,
    ModelResolvedReducer,
    check_budget,
    check_fraction,
    tokens_for_budget,
)
from visor_model.methods.encoder import (
    attention_queries_keys,
    encoder_has_cls,
    encoder_layers,
    feature_layer,
    resolve_score,
    scores_from_queries_keys,
)
from visor_model.methods.hired import (
    SCORES,
    is_auto,
    top_k_mask,
)

DOMINANT_RATIO = 54 / 64  # the official LLaVA settings: 54 + 10, 108 + 20, 162 + 30
MERGES = ("official", "mean")


@dataclass(frozen=True)
class VisionZipSettings(EncoderScoring):
    """Settings of VisionZip. `score=None` is derived from the encoder by `resolve`.

    budget:         fraction in (0, 1] of the sample's patch tokens that enter the LLM (dominant + contextual)
    dominant_ratio: share in [0, 1] of each crop's tokens that are dominant (the rest are contextual)
    score:          "cls" (CLS->patch attention) or "mean_received" (CLS-free encoders); None: "cls" if the
                    encoder has a CLS token
    merge:          "official" (a contextual token is its target + the mean of the tokens assigned to it, as the
                    official code computes it) or "mean" (the mean of the target and its tokens; an ablation)
    """

    budget: float
    dominant_ratio: float = DOMINANT_RATIO
    score: str | None = None
    merge: str = "official"

    def __post_init__(self):
        object.__setattr__(self, "budget", check_budget(self.budget))
        object.__setattr__(self, "dominant_ratio", check_fraction(self.dominant_ratio, "dominant_ratio"))
        object.__setattr__(self, "score", None if is_auto(self.score) else self.score)
        if self.score is not None and self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES} (or None for the encoder's default), got {self.score!r}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")

    def resolve(self, model) -> VisionZipSettings:
        score = resolve_score(model, self.score)
        return replace(self, score=score)

    full_images = 0  # one scoring layer, on every crop

    def overhead_flops(self, shape: LlavaShape, tokens: SampleTokens, causal_mode: str = "causal") -> Overhead:
        """The feature layer's attention scores, the merge's key comparisons (`merge_flops`, terms "merge.*") and
        the contextual tokens projected once more (`merge_work`), of resolved settings (`resolve`)."""
        if tokens.crop_patches is None:
            raise ValueError("VisionZip's merge FLOPs need the sample's crop_patches (SampleTokens.from_record)")
        pairs, reprojected = merge_work(tokens.crop_patches, self.budget, self.dominant_ratio)
        scores = super().overhead_flops(shape, tokens, causal_mode)
        return Overhead(selection=scores.selection + merge_flops(shape.vision, pairs).prefixed("merge."),
                        projector_tokens=reprojected)


# ----------------------------------------------------------------------------------------------------------
# pure functions: the per-crop budgets and the merge work they imply (the FLOP accounting uses both)
# ----------------------------------------------------------------------------------------------------------


def crop_budgets(present: Sequence[int], budget: float, dominant_ratio: float) -> list[tuple[int, int]]:
    """(dominant, contextual) tokens of every crop of a sample whose crops hold `present` patch tokens.

    The sample keeps tokens_for_budget(budget, sum(present)), split over the crops in proportion to `present`
    (floors, then one more to the largest remainders, ties to the lower crop), and each crop's n tokens are
    floor(dominant_ratio x n + 1/2) dominant, the rest contextual. A crop never gets more than it holds."""
    present = [int(p) for p in present]
    total = sum(present)
    if total == 0:
        return [(0, 0) for _ in present]
    n_keep = tokens_for_budget(budget, total)
    shares = [n_keep * p // total for p in present]  # exact integer floors of n_keep * p / total
    remainders = [n_keep * p % total for p in present]
    for k in sorted(range(len(present)), key=lambda k: (-remainders[k], k))[: n_keep - sum(shares)]:
        shares[k] += 1  # a non-zero remainder: the share was below p, so it stays <= p
    budgets = []
    for n in shares:
        dominant = min(n, int(dominant_ratio * n + 0.5))
        budgets.append((dominant, n - dominant))
    return budgets


def merge_work(present: Sequence[int], budget: float, dominant_ratio: float) -> tuple[int, int]:
    """(key comparisons, contextual tokens re-projected) of one sample: a crop with p present tokens, d dominant
    and c contextual merges its m = p - d - c other tokens, comparing each with the c targets (m x c
    comparisons); when it merges any, its c contextual tokens go through the projector."""
    pairs = projected = 0
    for p, (d, c) in zip(present, crop_budgets(present, budget, dominant_ratio)):
        merged = p - d - c
        if c and merged:
            pairs += merged * c
            projected += c
    return pairs, projected


def merge_flops(vshape: VisionShape, pairs: int) -> FlopTerms:
    """The merge's `pairs` (merged token, target) cosine similarities of head-averaged keys, one d_h-dim dot product
    each, as one matmul per crop. The head average, the normalisation and the averaging of the merged vectors are
    elementwise (not counted); the attention scores are `attention_score_flops` on the feature layer, the
    re-projection of the contextual tokens the projector's."""
    pairs = _count("pairs", pairs, allow_zero=True)
    return FlopTerms.of({"similarity": 2 * pairs * (vshape.hidden // vshape.n_heads)})


def target_positions(n_remaining: int, n_targets: int) -> torch.Tensor:
    """The official code's targets among the remaining tokens: every max(1, R // C)-th, the first C."""
    step = max(1, n_remaining // n_targets)
    return torch.arange(0, n_remaining, step)[:n_targets]


# ----------------------------------------------------------------------------------------------------------
# the reducer
# ----------------------------------------------------------------------------------------------------------


@dataclass
class VisionZipAllocation:
    """Accounting of one sample, per crop (0 = base image, k = k-th sub-image)."""

    present: list[int]  # patch tokens present after packing
    dominant: list[int]
    contextual: list[int]
    merged: list[int]  # patch tokens merged into the contextual tokens
    dropped: list[int]  # patch tokens neither kept nor merged (crops without contextual tokens)


class VisionZip(ModelResolvedReducer):
    """VisionZip's dominant + contextual tokens; see the module docstring. `reduce_with_allocations` also
    returns each sample's per-crop counts."""

    name = "visionzip"

    def __init__(self, budget: float, dominant_ratio: float = DOMINANT_RATIO, score: str | None = None,
                 merge: str = "official", model=None):
        self.config = VisionZipSettings(budget, dominant_ratio, score, merge)
        self._resolved: tuple[int, VisionZipSettings] | None = None
        if model is not None:
            self.bind(model)

    def settings(self) -> dict:
        config = self._resolved[1] if self._resolved is not None else self.config
        return {"method": self.name, "budget": config.budget, "dominant_ratio": config.dominant_ratio,
                "score": config.score or "auto", "merge": config.merge}

    def reduce(self, model, vision: VisionOutputs, sample_keys: list[str]) -> list[ImageTokens]:
        return self.reduce_with_allocations(model, vision, sample_keys)[0]

    @torch.no_grad()
    def reduce_with_allocations(self, model, vision: VisionOutputs, sample_keys: list[str]
                                ) -> tuple[list[ImageTokens], list[VisionZipAllocation]]:
        config = self.resolved(model)
        if vision.hidden_states is None:
            raise ValueError("VisionZip needs the tower's hidden states: encode_images(..., return_hidden_states=True)")
        scores, keys = self.scores_and_keys(model, vision, config.score)
        counts = torch.bincount(vision.crop_owner.cpu(), minlength=len(vision.images))  # [B] crops per image
        first_crop = (torch.cumsum(counts, 0) - counts).tolist()
        encoder_out = None  # the packed encoder outputs, made when something is merged
        keeps, allocations, merges = [], [], []  # merges: (image, target positions [C], contextual vectors [C, d])
        for b, image in enumerate(vision.images):
            partition, patch = image.partition.cpu(), image.patch_index.cpu()
            present = image.crop_patches(int(counts[b]))
            budgets = crop_budgets(present, config.budget, config.dominant_ratio)
            keep = image.is_newline.cpu().clone()  # every newline stays
            merged, dropped = [0] * len(budgets), [0] * len(budgets)
            for j, (n_dominant, n_contextual) in enumerate(budgets):
                crop = first_crop[b] + j
                members = torch.nonzero(partition == j).squeeze(1)  # packed positions of crop j's tokens
                members = members[torch.argsort(patch[members], stable=True)]  # in the crop's raster order
                dominant = top_k_mask(scores[crop][patch[members]], n_dominant, patch[members])
                keep[members[dominant]] = True
                rest = members[~dominant]
                if n_contextual == 0:
                    dropped[j] = rest.numel()
                    continue
                is_target = torch.zeros(rest.numel(), dtype=torch.bool)
                is_target[target_positions(rest.numel(), n_contextual)] = True
                targets, others = rest[is_target], rest[~is_target]
                keep[targets] = True
                if others.numel() == 0:  # every remaining token is a target: nothing to merge
                    continue
                if encoder_out is None:
                    encoder_out = pack_crop_features(model, vision, select_vision_features(model, vision.hidden_states))
                contextual = merge(encoder_out[b], keys[crop], patch, targets, others, config.merge)
                merges.append((b, targets, contextual))
                merged[j] = others.numel()
            keeps.append(keep)
            allocations.append(VisionZipAllocation(present=list(present), dominant=[d for d, _ in budgets],
                                                   contextual=[c for _, c in budgets], merged=merged, dropped=dropped))
        features = self.project_merges(model, vision, merges)
        out = []
        for image, feats, keep in zip(vision.images, features, keeps):
            merged_image = ImageTokens(feats, image.partition, image.patch_index, image.grid, image.patches_per_side)
            out.append(merged_image.select(keep.to(image.partition.device)))
        return out, allocations

    @staticmethod
    def scores_and_keys(model, vision: VisionOutputs, score: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature layer's per-patch `score` [n_crops, P] (CPU) and its keys averaged over heads, normalised
        [n_crops, P, d_h] (the official metric), from the hidden states entering it."""
        has_cls = encoder_has_cls(model)
        first = int(has_cls)  # index of the first patch token in the encoder sequence
        layer_index = feature_layer(model)
        hidden = vision.hidden_states[layer_index]  # [n_crops, seq, d_v]
        n_patches = vision.images[0].patches_per_side ** 2
        if hidden.shape[1] != n_patches + first:
            raise ValueError(f"encoder sequence of {hidden.shape[1]} tokens != {n_patches} patches + {first} CLS")
        scores, keys = [], []
        for start in range(0, hidden.shape[0], 4):  # bounded memory, as hired.attention_scores
            q, k = attention_queries_keys(encoder_layers(model)[layer_index], hidden[start : start + 4])
            scores.append(scores_from_queries_keys(q, k, score, has_cls).cpu())  # [c, P]
            keys.append(k.mean(dim=1)[:, first:])  # [c, P, d_h]
        keys = torch.cat(keys)
        return torch.cat(scores), keys / keys.norm(dim=-1, keepdim=True)

    @staticmethod
    def project_merges(model, vision: VisionOutputs, merges) -> list[torch.Tensor]:
        """Every image's packed features with its merged contextual tokens projected in place of their targets
        (one projector call for the batch)."""
        features = [image.features for image in vision.images]
        if not merges:
            return features
        projector = model.model.multi_modal_projector
        dtype = next(projector.parameters()).dtype
        projected = projector(torch.cat([vectors for _, _, vectors in merges]).to(dtype))  # [sum C, d]
        start = 0
        for b, targets, vectors in merges:
            if features[b] is vision.images[b].features:
                features[b] = features[b].clone()
            rows = projected[start : start + len(targets)].to(features[b].dtype)
            features[b][targets.to(features[b].device)] = rows
            start += len(targets)
        return features


def merge(encoder_out: torch.Tensor, keys: torch.Tensor, patch: torch.Tensor, targets: torch.Tensor,
          others: torch.Tensor, rule: str = "official") -> torch.Tensor:
    """The contextual tokens of one crop: each of the `others` goes to the target whose key is most similar
    (cosine; ties: the earlier target); a contextual token is its target's encoder output plus the mean of those
    assigned to it ("official", the official code's), or the mean of the target and them ("mean"). float32.

    encoder_out: [n, d_in] the image's packed encoder outputs; keys: [P, d_h] the crop's normalised keys;
    patch: [n] patch index of every packed token; targets [C], others [M]: packed positions.
    returns [C, d_in]
    """
    device = keys.device
    similarity = keys[patch[others].to(device)] @ keys[patch[targets].to(device)].T  # [M, C]
    assign = similarity.argmax(dim=1).to(encoder_out.device)  # [M]
    vectors = encoder_out.to(torch.float32)
    sums = torch.zeros(len(targets), vectors.shape[1], device=vectors.device)
    sums.index_add_(0, assign, vectors[others.to(vectors.device)])
    assigned = torch.bincount(assign, minlength=len(targets))  # [C]
    target = vectors[targets.to(vectors.device)]
    if rule == "mean":
        return (target + sums) / (1 + assigned)[:, None]
    return target + sums / assigned.clamp(min=1)[:, None]
