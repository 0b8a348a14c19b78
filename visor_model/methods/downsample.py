"""Downsample: the base model on a lower-resolution input, the plainest way to spend fewer visual tokens.

Nothing is selected or merged: the image reaches the vision tower smaller, through the `TokenReducer` input
hooks that `VisionLanguageRunner` applies (`input_size` before the image processor, `encoded_crops` in
`encode_images`), and every token the smaller input produces enters the LLM. The FLOP record counts the crops
actually encoded (vision tower and projector), so the saving in the encoder is charged as it happens.

Modes:
- `base_only`: only the base crop (the whole image resized to one crop) is encoded: LLaVA's AnyRes without its
  sub-images. The model's packing treats it as a single-crop image, i.e. its P patches and one newline token
  (transformers' `pack_image_features`).
- `scale`: the image is resized (bicubic, like the processors) before the image processor, which then picks
  the AnyRes grid of the smaller image: fewer crops, fewer patches after un-padding. Either a fixed `scale`
  (each side times the factor, rounded, at least 2 px) or a `budget`: per image, the largest size of its
  aspect (long side L, L - 1, ..., down to one crop's side, e.g. 336 px for LLaVA-NeXT) whose patch-token count
  is at most floor(budget x the count at the image's own size) (at least one), counted with the model's own
  packing without running the encoder (`patch_token_count`). Below one crop's side a smaller image only loses
  pixels: AnyRes upsamples it onto the smallest grid and rounding distorts its aspect. AnyRes never goes below
  the base crop plus its smallest grid (about 40% of a square image's tokens on LLaVA-NeXT), so a smaller
  budget gets the largest size with the fewest tokens. The count is not monotone in the size (rounding moves
  the un-padded content by a row), hence a scan rather than a bisection. The per-sample log has the factor used
  (`input_scale`). Budget 1.0 and scale 1.0 are the base model exactly.

The search packs one placeholder per candidate size (about 0.1 ms each), at most the long side in pixels per
image size (sizes are cached).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visor_model.llava.runner import MIN_SIDE
from visor_model.llava.visual import patch_token_count
from visor_model.methods.base import TokenReducer, check_budget, tokens_for_budget

MODES = ("base_only", "scale")


@dataclass(frozen=True)
class DownsampleSettings:
    """mode: "base_only" (no other setting) or "scale" (exactly one of `scale` in (0, 1] and `budget` in (0, 1])."""

    mode: str
    scale: float | None = None
    budget: float | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"downsample's mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "base_only":
            if self.scale is not None or self.budget is not None:
                raise ValueError("downsample mode=base_only takes neither scale nor budget (its budget is one crop)")
            return
        if (self.scale is None) == (self.budget is None):
            raise ValueError("downsample mode=scale needs exactly one of scale=S (a fixed factor) or budget=B "
                             "(the largest size with at most B x the visual tokens)")
        if self.scale is not None:
            object.__setattr__(self, "scale", check_budget(self.scale, "scale"))
        else:
            object.__setattr__(self, "budget", check_budget(self.budget))


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(height, width) times `scale`, rounded half up, at least MIN_SIDE pixels each."""
    return tuple(max(MIN_SIDE, int(side * scale + 0.5)) for side in size)


class Downsample(TokenReducer):
    """A lower-resolution input (see the module docstring); all of its tokens enter the LLM."""

    name = "downsample"

    def __init__(self, mode: str, scale: float | None = None, budget: float | None = None):
        self.config = DownsampleSettings(mode, scale, budget)
        self._sizes: dict[tuple[int, tuple[int, int]], tuple[int, int]] = {}  # (model id, size) -> input size

    def reduce(self, model, vision, sample_keys):
        return list(vision.images)

    def settings(self) -> dict:
        return {"method": self.name, "mode": self.config.mode, "scale": self.config.scale,
                "budget": self.config.budget}

    def input_size(self, model, size: tuple[int, int]) -> tuple[int, int]:
        size = tuple(int(side) for side in size)
        if self.config.mode == "base_only":
            return size
        if self.config.scale is not None:
            return scaled_size(size, self.config.scale)
        key = (id(model), size)
        if key not in self._sizes:
            self._sizes[key] = self.budget_size(model, size)
        return self._sizes[key]

    def budget_size(self, model, size: tuple[int, int]) -> tuple[int, int]:
        """The largest size of `size`'s aspect (long side L, L - 1, ..., one crop's side) with at most the budget's
        patch tokens; none: the largest with the fewest tokens."""
        target = tokens_for_budget(self.config.budget, patch_token_count(model, size))
        long_side = max(size)
        shortest = min(long_side, model.config.vision_config.image_size)
        fewest = None  # (tokens, size)
        for side in range(long_side, shortest - 1, -1):
            candidate = scaled_size(size, side / long_side)
            tokens = patch_token_count(model, candidate)
            if tokens <= target:
                return candidate
            if fewest is None or tokens < fewest[0]:
                fewest = (tokens, candidate)
        return fewest[1]

    def encoded_crops(self, model, image_sizes: torch.Tensor) -> list[int] | None:
        return [1] * len(image_sizes) if self.config.mode == "base_only" else None
