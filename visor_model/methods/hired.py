"""HiRED: High-Resolution Early Dropping (Arif et al., arXiv 2408.10945, AAAI 2025) as a `TokenReducer`.

HiRED drops visual tokens of an AnyRes LLaVA model before the LLM, under a token budget, in two steps:

1. *Distribute*: the full (base) image gets a share `alpha` of the budget; the AnyRes sub-images share the
   rest in proportion to how much vision-encoder attention (an early layer, `distribution_layer`) the part of
   the full image they cover receives.
2. *Select*: inside every partition keep the top-k patches by the encoder's attention at `selection_layer`
   (the layer whose output LLaVA feeds to the LLM).

The importance score of a patch is the CLS->patch attention, summed over heads (`score="cls"`). Encoders
without a CLS token (SigLIP in LLaVA-OneVision) use `score="mean_received"`: the attention a patch receives,
averaged over all patch queries and summed over heads. Why that is a reasonable stand-in: the CLS query is
the token whose output summarises the image, so its attention row says which patches the encoder pools
information from. Without a CLS token there is no such row; the column means of the patch->patch attention
are its CLS-free analogue: they are what a query that attends like the average patch would read (every
softmax row is a distribution over the tokens, so their mean is one too, like the CLS row). Patches that
many queries read from are the ones the encoder routes information through; "attention received" is the
usual CLS-free importance score in training-free token dropping. It is a proxy, not the paper's quantity:
the report states which score produced each result.
SigLIP's attention-pooling head has a learned probe query, but LLaVA-OneVision never runs that head (its
projector reads the last hidden state), so it is not used.

Attention probabilities are computed only for the two layers that are needed, from the hidden states that
enter them (`softmax(q k^T / sqrt(d_head))` after the layer's own pre-attention LayerNorm and q/k
projections). The vision tower itself runs unchanged (no eager attention, no `output_attentions`).

Newline tokens (LLaVA's `image_newline` after each row of the un-padded sub-image grid) are not patches: they
are never counted in the budget.

Fidelity modes: paper vs. reference_code
----------------------------------------
`mode="paper"` implements the algorithm as the paper describes it; `mode="reference_code"` reproduces what
the official code (github.com/hasanar1f/HiRED, `modeling_llava_next.py` of its transformers fork) does.
They differ in these points (P = patches per crop, n = crops incl. the full image, N = token budget):

| | `paper` | `reference_code` |
|---|---|---|
| budget N | floor(budget x patch tokens present after un-padding), at least 1 | int(budget x n x P): padded crops, before un-padding |
| full image | floor(alpha x N), at most its P tokens | min(int(alpha x N), P) |
| sub-image score s_i | attention mass (summed scores) of the full-image patches that spatially cover sub-image i | number of the full image's top-int(P x (1 - alpha)) patches (by score) that fall in region i |
| full-image region of sub-image i | spatial: the patch centre's position in the full image, mapped onto the sub-image grid (padding-aware, see `spatial_regions`) | the raster-ordered h x w score map cut into n - 1 contiguous chunks: horizontal strips, so only single-column grids (2x1, 3x1) map to the right sub-image |
| budget exactness | exact: per-partition caps and floor leftovers are redistributed (largest remainders), so every sample keeps exactly N patch tokens | upper bound: per-sub-image floor(ratio x rest) clamped at P, leftovers dropped; top-k is taken over all P patches of a crop, and the ones un-padding removes are lost, so fewer than N survive |
| candidates | only patches present after un-padding | all P patches of each crop |
| newline tokens | kept in place (setting `newlines`, default "all") | dropped (the official code drops them in every mode, its "Full" baseline included) |
| budget = 1.0 | bit-identical to the base model | all patch tokens, no newlines (the official code skips selection at rate 1.0) |

Choices where the paper is silent (paper mode):
- Newline tokens are structure, not content: by default all stay in place (`newlines="all"`, as the project's
  other reducers do), so a sample's LLM input is N patch tokens plus its newline tokens. `newlines=
  "occupied_rows"` keeps a row's newline only when a patch of that row survives; `"none"` drops them all.
- Budgets are exact, which wins over alpha: with alpha = 1 only full-image tokens are kept as long as N fits
  in the full image (N <= P); a larger N spills over to the sub-images by s_i, and with alpha = 0 whatever the
  sub-images cannot hold goes to the full image.
- The spatial mapping accounts for the AnyRes padding: the sub-image grid tiles the padded canvas, the full
  image covers only the un-padded content, whose extent is read off the patches that survived un-padding.
  Without padding this is the plain [r/rows, (r+1)/rows) x [c/cols, (c+1)/cols) split of the full image.
- Note that reference_code's budget counts padded crops, so on strongly padded images (e.g. 800 x 40 px,
  whose sub-images are un-padded away entirely) it can keep more than budget x the tokens present.
- LLaVA-OneVision's `anyres_max_9` (not in the paper, which uses LLaVA-NeXT) bilinearly downsamples an un-padded
  canvas of more than about 9 crops' patches, so such a sub-image token blends up to 2 x 2 neighbouring
  patches. In both modes it stands for the patch nearest to the position it samples (`encode_images` records
  that patch): its score is that patch's, it counts towards that patch's sub-image, and the content box is
  read off those positions. The budget counts the tokens present, i.e. after downsampling.

Shared by both modes: dropping happens after the projector (the projector runs on every token) and heads are
summed, as in the official code; ties of the top-k go to the lower patch index (the official torch.topk's tie
order is unspecified) and scores are computed in float32 (the official code: in the model's dtype, fp16).
Departures of `reference_code` from the official code, on purpose:
- alpha such that no patch is counted (e.g. alpha = 1 with a sub-image budget left) makes the official code
  divide 0 by 0 and call topk with a garbage count; here every sub-image then gets 0 tokens.
- Raster chunks when P is not divisible by the number m of sub-images (the official reshape would raise):
  raster patch i goes to chunk floor(i m / P).
- Not reproduced: the official `pack_HiRED_image_features` unpacks the grid as (cols, rows) instead of
  (rows, cols), i.e. transposes the sub-image layout of non-square grids before un-padding (which then cuts
  real content away), and its `unpad_image` truncates (`int`) where transformers rounds. Reproducing these
  would need a second, wrong packing; our tokens always come from transformers' own packing.
- The count of the full image's top patches uses int(P x (1 - alpha)) as in the released code (a later
  revision is reported to use a fixed top-100).
"""  # noqa: E501 (a Markdown table: its rows cannot be wrapped)

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from visor_model.llava.visual import NEWLINE, ImageTokens, VisionOutputs
from visor_model.methods.base import (
    EncoderScoring,
    ModelResolvedReducer,
    check_budget,
    check_fraction,
    check_integer,
    tokens_for_budget,
)
from visor_model.methods.encoder import (  # noqa: F401 (the encoder helpers, also imported from here)
    attention_queries_keys,
    attention_scores,
    encoder_has_cls,
    encoder_layers,
    feature_layer,
    resolve_score,
    scores_from_queries_keys,
)

MODES = ("paper", "reference_code")
SCORES = ("cls", "mean_received")
NEWLINE_RULES = ("all", "occupied_rows", "none")


# --- settings -------------------------------------------------------------------------------------------


def is_auto(value) -> bool:
    """None, "", "none", "auto" all mean "derive from the model"."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "auto"))


@dataclass(frozen=True)
class HiREDSettings(EncoderScoring):
    """Settings of HiRED. `None` fields are derived from the model by `resolve`.

    budget:             fraction in (0, 1] of the sample's patch tokens (all partitions; newlines not counted)
    alpha:              share in [0, 1] of the budget for the full (base) image
    mode:               "paper" or "reference_code" (see the module docstring)
    score:              "cls" (CLS->patch attention; encoders with a CLS token) or "mean_received"
                        (mean attention a patch receives from all patches); None: "cls" if the encoder has CLS
    distribution_layer: encoder layer whose attention distributes the budget over sub-images (paper: 0)
    selection_layer:    encoder layer whose attention picks the tokens; None: the layer whose output feeds
                        the projector (from `vision_feature_layer`; 22 of 24 for LLaVA-NeXT, as in the paper)
    newlines:           "all" (keep every newline token), "occupied_rows" (keep a row's newline only if a
                        patch of that row is kept) or "none"; None: "all" in paper mode, "none" in
                        reference_code mode
    head:               None: sum the attention over the heads (paper and official code); an index: that head's
                        attention alone (HiRED's ablation of head aggregation)
    """

    budget: float
    alpha: float = 0.5
    mode: str = "paper"
    score: str | None = None
    distribution_layer: int = 0
    selection_layer: int | None = None
    newlines: str | None = None
    head: int | None = None

    def __post_init__(self):
        def set_(name, value):  # the dataclass is frozen
            object.__setattr__(self, name, value)

        set_("budget", check_budget(self.budget))
        set_("alpha", check_fraction(self.alpha, "alpha"))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        set_("score", None if is_auto(self.score) else self.score)
        if self.score is not None and self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES} (or None for the encoder's default), got {self.score!r}")
        set_("distribution_layer", check_integer(self.distribution_layer, "distribution_layer"))
        if self.distribution_layer < 0:
            raise ValueError(f"distribution_layer must be >= 0, got {self.distribution_layer}")
        if not is_auto(self.selection_layer):
            set_("selection_layer", check_integer(self.selection_layer, "selection_layer"))
            if self.selection_layer < 0:
                raise ValueError(f"selection_layer must be >= 0, got {self.selection_layer}")
        else:
            set_("selection_layer", None)
        if self.newlines is None or str(self.newlines).strip().lower() in ("", "auto"):  # "none" is a rule here
            set_("newlines", None)
        if self.newlines is not None and self.newlines not in NEWLINE_RULES:
            raise ValueError(f"newlines must be one of {NEWLINE_RULES}, got {self.newlines!r}")
        set_("head", None if is_auto(self.head) else check_integer(self.head, "head"))

    def resolve(self, model) -> HiREDSettings:
        """Fill the `None` fields from `model` and check the settings against its vision encoder."""
        n_layers = len(encoder_layers(model))
        score = resolve_score(model, self.score)
        selection = self.selection_layer if self.selection_layer is not None else feature_layer(model)
        heads = encoder_layers(model)[0].self_attn.num_heads
        if self.head is not None and not 0 <= self.head < heads:
            raise ValueError(f"head must be in [0, {heads - 1}] for this {heads}-head encoder, got {self.head}")
        for name, layer in (("distribution_layer", self.distribution_layer), ("selection_layer", selection)):
            if not 0 <= layer < n_layers:
                raise ValueError(
                    f"{name} must be in [0, {n_layers - 1}] for this {n_layers}-layer encoder, got {layer}"
                )
        newlines = self.newlines or ("all" if self.mode == "paper" else "none")
        return replace(self, score=score, selection_layer=selection, newlines=newlines)


# --- pure functions: region mapping, allocation, top-k (no model needed; tested directly) ---------------


def spatial_regions(
    patches_per_side: int, grid: tuple[int, int], content: tuple[float, float, float, float] | None = None
) -> torch.Tensor:
    """Paper mode: which sub-image each full-image patch spatially covers.

    The full-image crop is the whole image resized to a square; the sub-images tile the AnyRes canvas
    (rows x side by cols x side patches) onto which the image was resized and centred with padding.
    `content` = (top, bottom, left, right) is the image's rectangle on that canvas in patch units (what
    un-padding keeps; default: the whole canvas, i.e. no padding, where sub-image (r, c) covers
    [r / rows, (r + 1) / rows) x [c / cols, (c + 1) / cols) of the full image). Each full-image patch centre
    is mapped onto the canvas and assigned to the sub-image that contains it.

    returns [side * side] long: raster sub-image index r * cols + c (0-based) of every full-image patch.
    """
    rows, cols = grid
    side = patches_per_side
    top, bottom, left, right = content if content is not None else (0.0, rows * side, 0.0, cols * side)
    centre = (torch.arange(side, dtype=torch.float64) + 0.5) / side  # [side] fractions of the full image
    y = top + centre * (bottom - top)  # [side] canvas rows (patch units) of the full-image patch rows
    x = left + centre * (right - left)  # [side] canvas columns
    row = (y // side).long().clamp(0, rows - 1)
    col = (x // side).long().clamp(0, cols - 1)
    return (row[:, None] * cols + col[None, :]).reshape(-1)


def raster_chunk_regions(patches_per_side: int, grid: tuple[int, int]) -> torch.Tensor:
    """Reference-code mode: the official code's region of each full-image patch.

    It reshapes the raster-ordered h x w map into (rows * cols) contiguous chunks and gives chunk j to
    sub-image j, so for a 2x2 grid the regions are horizontal strips of h / 4 rows, not quadrants.
    returns [side * side] long.
    """
    n_patches = patches_per_side**2
    n_regions = grid[0] * grid[1]
    return torch.arange(n_patches) * n_regions // n_patches


def content_box(image: ImageTokens) -> tuple[float, float, float, float] | None:
    """(top, bottom, left, right) of the sub-image patches that survived un-padding, in canvas patch units."""
    sub = image.partition >= 1
    if not bool(sub.any()):
        return None
    side, cols = image.patches_per_side, image.grid[1]
    r, c = (image.partition[sub] - 1).div(cols, rounding_mode="floor"), (image.partition[sub] - 1) % cols
    y = r * side + image.patch_index[sub].div(side, rounding_mode="floor")
    x = c * side + image.patch_index[sub] % side
    return float(y.min()), float(y.max() + 1), float(x.min()), float(x.max() + 1)


def _order(primary_desc: torch.Tensor, secondary_desc: torch.Tensor | None = None) -> torch.Tensor:
    """Indices sorted by primary (descending), then secondary (descending), then index (ascending)."""
    order = torch.arange(primary_desc.numel())
    if secondary_desc is not None:
        order = order[torch.argsort(-secondary_desc[order], stable=True)]
    return order[torch.argsort(-primary_desc[order], stable=True)]


def allocate_budget(total: int, weights: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """Split `total` tokens over partitions in proportion to `weights`, at most `capacity[i]` each.

    Exact: the result sums to min(total, capacity.sum()). Partitions whose proportional share exceeds their
    capacity are filled and the rest is re-split among the others (water-filling); the floor leftovers go to
    the largest remainders (ties: larger weight, then lower index). Zero weights everywhere (no signal)
    split in proportion to the free capacity.
    weights: [k] >= 0, capacity: [k] >= 0 ints. returns [k] long.
    """
    weights = weights.detach().double().clamp_min(0).cpu()
    capacity = capacity.detach().long().cpu()
    alloc = torch.zeros_like(capacity)
    remaining = min(int(total), int(capacity.sum()))
    open_ = capacity > 0
    while remaining > 0:
        room = (capacity - alloc).double()
        w = torch.where(open_, weights, 0.0)
        if float(w.sum()) <= 0.0:
            w = torch.where(open_, room, 0.0)
        ideal = remaining * w / w.sum()  # [k]
        saturated = open_ & (ideal >= room)
        if bool(saturated.any()):
            remaining -= int((capacity - alloc)[saturated].sum())
            alloc[saturated] = capacity[saturated]
            open_ &= ~saturated
            continue
        base = ideal.floor()
        alloc += base.long()
        remaining -= int(base.sum())
        fraction = torch.where(open_, ideal - base, -1.0)  # closed partitions never get a leftover
        winners = _order(fraction, w)[:remaining]
        alloc[winners] += 1  # ideal < room, so floor(ideal) + 1 <= room
        remaining = 0
    return alloc


def paper_partition_budgets(
    n_keep: int, alpha: float, region_scores: torch.Tensor, capacity: torch.Tensor
) -> torch.Tensor:
    """Paper mode: tokens per partition (0 = full image, i = sub-image i), summing to exactly min(n_keep, cap).

    The full image gets floor(alpha x n_keep) (at most its capacity); the sub-images share the rest in
    proportion to `region_scores` [n_sub] (capped, see `allocate_budget`). What the sub-images cannot hold
    goes back to the full image (e.g. alpha = 0 on an image whose sub-images are mostly padding), what the
    full image cannot hold goes to the sub-images.
    capacity: [1 + n_sub] patch tokens present per partition. returns [1 + n_sub] long.
    """
    capacity = capacity.long().cpu()
    n_keep = min(int(n_keep), int(capacity.sum()))
    full = min(math.floor(alpha * n_keep + 1e-9), int(capacity[0]))
    sub = allocate_budget(n_keep - full, region_scores, capacity[1:])
    full += n_keep - full - int(sub.sum())  # sub-images full: the rest returns to the full image
    return torch.cat([torch.tensor([full]), sub])


def reference_partition_budgets(
    n_crops: int, patches_per_crop: int, budget: float, alpha: float, region_counts: torch.Tensor
) -> torch.Tensor:
    """Reference-code mode: the official code's per-partition budgets (upper bounds, not redistributed).

    region_counts: [n_crops - 1] how many of the full image's top patches fall in each sub-image's region.
    returns [n_crops] long.
    """
    total = int(n_crops * patches_per_crop * budget)  # padded crops x P; Python int() truncation as upstream
    full = min(int(total * alpha), patches_per_crop)
    sub_total = min(total - full, (n_crops - 1) * patches_per_crop)
    sub = torch.zeros(n_crops - 1, dtype=torch.long)
    counts = region_counts.float().cpu()  # upstream computes the ratio in float32
    if sub_total > 0 and float(counts.sum()) > 0:  # upstream: 0 / 0 -> NaN budgets (crash); here 0 tokens
        sub = (counts / counts.sum() * sub_total).long().clamp(max=patches_per_crop)
    return torch.cat([torch.tensor([full]), sub])


def top_k_mask(scores: torch.Tensor, k: int, tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """[n] bool, True at the k highest `scores`; equal scores: lower `tie_break` (default: position) wins."""
    n = scores.numel()
    order = torch.arange(n) if tie_break is None else torch.argsort(tie_break.cpu(), stable=True)
    order = order[torch.argsort(-scores.detach().float().cpu()[order], stable=True)]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[: max(0, min(int(k), n))]] = True
    return mask


def newline_mask(image: ImageTokens, kept_patches: torch.Tensor, rule: str) -> torch.Tensor:
    """[n] bool: which newline tokens to keep. "occupied_rows": a newline ends the row of tokens since the
    previous newline; it is kept when a patch of that row is kept (full-image tokens, which precede the
    first row, do not count unless the image has no sub-images)."""
    newline = image.is_newline.cpu()
    if rule == "all":
        return newline
    if rule == "none":
        return torch.zeros_like(newline)
    row = torch.cumsum(newline.long(), 0) - newline.long()  # [n] newlines strictly before each token
    partition = image.partition.cpu()
    content = (partition >= 1) if bool((partition >= 1).any()) else (partition == 0)
    occupied = torch.zeros(int(newline.sum()) + 1, dtype=torch.bool)
    occupied[row[kept_patches & content]] = True
    return newline & occupied[row]


# --- the reducer ----------------------------------------------------------------------------------------


@dataclass
class HiREDAllocation:
    """Accounting of one sample: partition 0 = full image, i = i-th sub-image."""

    budget: int  # tokens HiRED aimed for (paper: exact; reference_code: upper bound)
    partition_budgets: list[int]
    kept: list[int]  # patch tokens that entered the LLM, per partition
    region_scores: list[float]  # s_i of every sub-image (attention mass or top-patch count)


class HiRED(ModelResolvedReducer):
    """HiRED token dropping; see the module docstring for the algorithm and the two fidelity modes.

    `reduce_with_allocations` also returns, per sample, the per-partition budgets and kept counts."""

    name = "hired"

    def __init__(
        self,
        budget: float,
        alpha: float = 0.5,
        mode: str = "paper",
        score: str | None = None,
        distribution_layer: int = 0,
        selection_layer: int | None = None,
        newlines: str | None = None,
        head: int | None = None,
        model=None,
    ):
        self.config = HiREDSettings(budget, alpha, mode, score, distribution_layer, selection_layer, newlines, head)
        self._resolved: tuple[int, HiREDSettings] | None = None
        if model is not None:
            self.bind(model)

    def settings(self) -> dict:
        config = self._resolved[1] if self._resolved is not None else self.config

        def auto(value):
            return "auto" if value is None else value

        return {
            "method": self.name,
            "budget": config.budget,
            "alpha": config.alpha,
            "mode": config.mode,
            "score": auto(config.score),
            "distribution_layer": config.distribution_layer,
            "selection_layer": auto(config.selection_layer),
            "newlines": auto(config.newlines),
            **({} if config.head is None else {"head": config.head}),
        }

    def reduce(self, model, vision: VisionOutputs, sample_keys: list[str]) -> list[ImageTokens]:
        return self.reduce_with_allocations(model, vision, sample_keys)[0]

    def reduce_with_allocations(self, model, vision: VisionOutputs, sample_keys: list[str]
                                ) -> tuple[list[ImageTokens], list[HiREDAllocation]]:
        """The kept tokens per sample (as `reduce`) and each sample's HiREDAllocation."""
        config = self.resolved(model)
        if vision.hidden_states is None:
            raise ValueError("HiRED needs the tower's hidden states: encode_images(..., return_hidden_states=True)")
        layers = encoder_layers(model)
        has_cls = encoder_has_cls(model)
        side = vision.images[0].patches_per_side
        n_patches = side * side
        seq = vision.hidden_states[0].shape[1]
        if seq != n_patches + has_cls:
            raise ValueError(f"encoder sequence of {seq} tokens != {n_patches} patches + {int(has_cls)} CLS")

        counts = torch.bincount(vision.crop_owner.cpu(), minlength=len(vision.images))  # [B] crops per image
        first_crop = torch.cumsum(counts, 0) - counts  # [B] crop index of every full image
        dist_hidden = vision.hidden_states[config.distribution_layer][first_crop.to(vision.hidden_states[0].device)]
        # distribution: [B, P] scores of the full-image crops; selection: [n_crops, P] scores of every crop
        distribution = attention_scores(layers[config.distribution_layer], dist_hidden, config.score, has_cls,
                                        head=config.head).cpu()
        selection = attention_scores(layers[config.selection_layer], vision.hidden_states[config.selection_layer],
                                     config.score, has_cls, head=config.head).cpu()

        kept, allocations = [], []
        for b, image in enumerate(vision.images):
            n_crops = int(counts[b])
            if n_crops != 1 + image.grid[0] * image.grid[1] and n_crops != 1:
                raise ValueError(f"sample {b}: {n_crops} crops for a {image.grid} grid")
            crop_scores = selection[first_crop[b] : first_crop[b] + n_crops]  # [n_crops, P]
            if config.mode == "paper":
                keep, allocation = self._paper(image, distribution[b], crop_scores, config)
            else:
                keep, allocation = self._reference_code(image, distribution[b], crop_scores, config)
            keep = keep | newline_mask(image, keep, config.newlines)
            kept.append(image.select(keep.to(image.partition.device)))
            allocations.append(allocation)
        return kept, allocations

    # -- paper ------------------------------------------------------------------------------------------

    def _paper(self, image: ImageTokens, distribution: torch.Tensor, crop_scores: torch.Tensor, config):
        """distribution: [P] full-image scores at the distribution layer; crop_scores: [n_crops, P]."""
        n_crops = crop_scores.shape[0]
        partition, patch = image.partition.cpu(), image.patch_index.cpu()
        is_patch = partition != NEWLINE
        capacity = torch.bincount(partition[is_patch], minlength=n_crops)  # [n_crops] present after un-padding
        n_keep = tokens_for_budget(config.budget, int(is_patch.sum()))

        n_sub = n_crops - 1
        if n_sub > 0:
            # paper: a sub-image's score is the attention mass of the full-image patches covering it (spatially)
            regions = spatial_regions(image.patches_per_side, image.grid, content_box(image))  # [P]
            region_scores = torch.zeros(n_sub, dtype=torch.float64).index_add_(0, regions, distribution.double())
        else:
            region_scores = torch.zeros(0, dtype=torch.float64)
        budgets = paper_partition_budgets(n_keep, config.alpha, region_scores, capacity)  # [n_crops]

        # paper: top-k among the tokens actually present; scores gathered through (partition, patch_index)
        token_scores = torch.full(partition.shape, -math.inf)
        token_scores[is_patch] = crop_scores[partition[is_patch], patch[is_patch]]
        keep = torch.zeros_like(is_patch)
        for k in range(n_crops):
            members = torch.nonzero(partition == k).squeeze(1)
            if members.numel():
                keep[members[top_k_mask(token_scores[members], int(budgets[k]), patch[members])]] = True
        allocation = HiREDAllocation(
            budget=n_keep,
            partition_budgets=budgets.tolist(),
            kept=torch.bincount(partition[keep], minlength=n_crops).tolist(),
            region_scores=region_scores.tolist(),
        )
        return keep, allocation

    # -- reference_code ---------------------------------------------------------------------------------

    def _reference_code(self, image: ImageTokens, distribution: torch.Tensor, crop_scores: torch.Tensor, config):
        """The official code's selection, on the tokens transformers' packing produced."""
        n_crops, n_patches = crop_scores.shape
        partition, patch = image.partition.cpu(), image.patch_index.cpu()
        is_patch = partition != NEWLINE
        if config.budget >= 1.0:
            # reference_code: the official code skips selection at rate 1.0 (all patches, newlines still dropped)
            keep = is_patch.clone()
            budgets = torch.bincount(partition[is_patch], minlength=n_crops)
            allocation = HiREDAllocation(int(budgets.sum()), budgets.tolist(), budgets.tolist(), [])
            return keep, allocation

        n_sub = n_crops - 1
        if n_sub > 0:
            # reference_code: count the full image's top-int(P (1 - alpha)) patches per raster chunk (not mass,
            # not spatial quadrants)
            top = top_k_mask(distribution, int(n_patches * (1 - config.alpha)))  # [P]
            regions = raster_chunk_regions(image.patches_per_side, image.grid)  # [P]
            region_counts = torch.bincount(regions[top], minlength=n_sub)
        else:
            region_counts = torch.zeros(0, dtype=torch.long)
        budgets = reference_partition_budgets(n_crops, n_patches, config.budget, config.alpha, region_counts)

        # reference_code: top-k over all P patches of every crop, padding patches included; the ones that
        # un-padding removed are simply absent, so the kept count can fall short of the budget
        chosen = torch.zeros(n_crops, n_patches, dtype=torch.bool)
        for k in range(n_crops):
            chosen[k] = top_k_mask(crop_scores[k], int(budgets[k]))
        keep = torch.zeros_like(is_patch)
        keep[is_patch] = chosen[partition[is_patch], patch[is_patch]]
        allocation = HiREDAllocation(
            budget=int(budgets.sum()),
            partition_budgets=budgets.tolist(),
            kept=torch.bincount(partition[keep], minlength=n_crops).tolist(),
            region_scores=region_counts.double().tolist(),
        )
        return keep, allocation
