"""Visual-token reduction methods applied between the projector and the LLM.

Every method is "the base model plus a rule for how much visual computation each sample gets". A reducer
receives the vision side's outputs for a batch and returns, per sample, the visual tokens that enter the LLM.
Budgets are fractions of the sample's patch tokens (LLaVA's row-newline tokens are structure, not content:
they are kept in place and not counted against the budget).
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod

import torch

from visor_model.efficiency.accounting import MethodCost, Overhead, SampleTokens
from visor_model.efficiency.flops import FlopTerms
from visor_model.efficiency.shapes import LlavaShape, VisionShape
from visor_model.efficiency.shapes import check_count as _count
from visor_model.llava.visual import ImageTokens, VisionOutputs


def check_budget(budget: float, name: str = "budget") -> float:
    """A budget is a fraction of visual tokens in (0, 1]."""
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1], got {budget!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be in (0, 1], got {budget!r}")
    return value


def check_fraction(value, name: str) -> float:
    """A number in [0, 1] (NaN and non-numbers are errors naming `name`)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return number


def check_integer(value, name: str) -> int:
    """An integer argument: lmms-eval hands over "3", 3 or 3.0 (a bool or a fraction is an error naming `name`)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not math.isfinite(number) or not number.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(number)


def tokens_for_budget(budget: float, n_tokens: int) -> int:
    """floor(budget * n) tokens, at least one."""
    return max(1, min(n_tokens, math.floor(budget * n_tokens + 1e-9)))


def stable_seed(*parts) -> int:
    """A seed from any printable parts, the same in every process (unlike Python's salted hash)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class TokenReducer(ABC):
    """Decides which visual tokens of each sample enter the LLM.

    Two optional hooks change what the vision tower sees (`visor_model.methods.downsample`); by default the
    base model's input: `input_size` (the size each image is resized to before the image processor) and
    `encoded_crops` (how many of its crops the tower encodes)."""

    name: str

    @abstractmethod
    def reduce(self, model, vision: VisionOutputs, sample_keys: list[str]) -> list[ImageTokens]:
        """Return the kept tokens per sample (original order preserved)."""

    @property
    def needs_vision_hidden_states(self) -> bool:
        return False

    def input_size(self, model, size: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) an image of (height, width) `size` is resized to before the image processor."""
        return size

    def encoded_crops(self, model, image_sizes: torch.Tensor) -> list[int] | None:
        """Crops per image the vision tower encodes (see `encode_images`); None: every crop the processor made."""
        return None

    def settings(self) -> dict:
        """The method's settings as recorded in every result."""
        return {"method": self.name}

    def flop_cost(self, model) -> MethodCost:
        """The FLOPs of the method's own work on `model` (selection, merging) beyond the host's forward on the kept
        tokens, for `visor_model.efficiency.accounting.FlopAccountant`; by default none."""
        return MethodCost()


class ModelResolvedReducer(TokenReducer):
    """A reducer whose settings (`self.config`, with a `resolve(model)` method) have fields derived from the model
    it runs on (e.g. the attention score an encoder supports): resolved once per model and cached."""

    config: object
    _resolved: tuple | None = None

    def bind(self, model):
        """Derive the automatic settings from `model` and validate them now (else on the first `reduce`)."""
        self._resolved = (id(model), self.config.resolve(model))
        return self

    def resolved(self, model):
        if self._resolved is None or self._resolved[0] != id(model):
            self.bind(model)
        return self._resolved[1]

    def flop_cost(self, model) -> MethodCost:
        """The resolved settings, which compute the method's overhead (`overhead_flops`)."""
        return self.resolved(model)

    @property
    def needs_vision_hidden_states(self) -> bool:
        return True


def attention_score_flops(vshape: VisionShape, n_crops: int, score: str, n_images: int = 1) -> FlopTerms:
    """The FLOPs of the encoder attention scores (`visor_model.methods.hired.attention_scores`), which recompute q
    and k of an encoder layer from its input hidden states: HiRED's distribution layer on each image's full-image
    crop (n_images crops) and its selection layer on all n_crops crops (VisionZip: its one scoring layer on all
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


class EncoderScoring(MethodCost):
    """Settings of a reducer that scores patches by the vision encoder's attention (`score`, resolved): its overhead
    is those scores (`attention_score_flops`), on every crop and on `full_images` full-image crops per image."""

    full_images = 1

    def overhead_flops(self, shape: LlavaShape, tokens: SampleTokens, causal_mode: str = "causal") -> Overhead:
        if not tokens.n_crops:
            return Overhead()
        return Overhead(selection=attention_score_flops(shape.vision, tokens.n_crops, self.score, self.full_images))


class FullTokens(TokenReducer):
    """The unmodified base model: every visual token enters the LLM."""

    name = "full"

    def reduce(self, model, vision, sample_keys):
        return list(vision.images)


class RandomDrop(TokenReducer):
    """Control method: keep a uniformly random floor(budget * n) of each sample's patch tokens.

    The draw depends only on (seed, sample key), so it is the same whatever the batch composition."""

    name = "random_drop"

    def __init__(self, budget: float, seed: int = 0):
        self.budget = check_budget(budget)
        self.seed = int(seed)

    def reduce(self, model, vision, sample_keys):
        kept = []
        for image, key in zip(vision.images, sample_keys):
            patches = torch.nonzero(~image.is_newline).squeeze(1)
            n_keep = tokens_for_budget(self.budget, patches.numel())
            generator = torch.Generator().manual_seed(stable_seed(self.seed, key))
            chosen = patches[torch.randperm(patches.numel(), generator=generator)[:n_keep].to(patches.device)]
            keep = image.is_newline.clone()
            keep[chosen] = True
            kept.append(image.select(keep))
        return kept

    def settings(self):
        return {"method": self.name, "budget": self.budget, "seed": self.seed}
