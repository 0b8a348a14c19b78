"""Visual tokens of LLaVA-NeXT / LLaVA-OneVision with the metadata every efficiency method needs.

`encode_images` runs the vision tower and projector exactly as transformers does and packs the features with
the model's own `pack_image_features` (base image, then the un-padded AnyRes grid row by row with a newline
token after each row), so at full budget the sequence is bit-identical to the stock model's. The same
packing is applied to a tensor of float canvas coordinates, which tells, for every packed token, which
partition (0 = the resized full image, 1.. = the AnyRes sub-images in raster order) and which patch of it its
features come from. Coordinates, not indices: LLaVA-OneVision's `anyres_max_9` downsamples a large un-padded
canvas bilinearly, which blends neighbouring patches; a blend of (row, col) is the position sampled, a blend of
raster indices is none (an integer index pushed through it lands anywhere in the crop). The position is
rounded to the nearest patch, the one with the largest bilinear weight.

`splice_prompts` then puts each sample's (possibly reduced) visual tokens where its `<image>` placeholder was
and left-pads the batch. Dropped tokens are absent from the tensors, not masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

NEWLINE = -1  # partition / patch index of LLaVA's row-newline tokens


@dataclass
class ImageTokens:
    """Packed visual tokens of one image.

    features:    [n, d] projector outputs (newline tokens included)
    partition:   [n] 0 = full (base) image, k >= 1 = k-th AnyRes sub-image, NEWLINE for newline tokens
    patch_index: [n] row-major index of the patch inside its partition's (h x w) grid, NEWLINE for newlines;
                 for a token of a downsampled canvas (anyres_max), the patch nearest to the position it samples
    grid:        (rows, cols) of AnyRes sub-images for this image
    patches_per_side: h = w, patches per side of one crop
    """

    features: torch.Tensor
    partition: torch.Tensor
    patch_index: torch.Tensor
    grid: tuple[int, int]
    patches_per_side: int

    @property
    def is_newline(self) -> torch.Tensor:
        return self.partition == NEWLINE

    @property
    def num_patch_tokens(self) -> int:
        return int((~self.is_newline).sum())

    def crop_patches(self, n_crops: int) -> tuple[int, ...]:
        """Patch tokens of each of the image's `n_crops` crops present here (after un-padding)."""
        return tuple(torch.bincount(self.partition[~self.is_newline].cpu(), minlength=n_crops).tolist())

    def select(self, keep: torch.Tensor) -> "ImageTokens":
        """Keep the tokens where the boolean mask `keep` [n] is true, in their original order."""
        return ImageTokens(
            features=self.features[keep],
            partition=self.partition[keep],
            patch_index=self.patch_index[keep],
            grid=self.grid,
            patches_per_side=self.patches_per_side,
        )


@dataclass
class VisionOutputs:
    """What the vision side produced for a batch: packed tokens per image and, on request, the tower's
    hidden states for every crop (`hidden_states[l]` is the input of encoder layer l, [n_crops, seq, d_v])
    with `crop_owner[c]` the batch index of crop c (crops of one image are contiguous, base image first);
    `image_sizes` [B, 2] the (height, width) the image processor got (what the packing un-pads to)."""

    images: list[ImageTokens]
    hidden_states: tuple[torch.Tensor, ...] | None
    crop_owner: torch.Tensor
    image_sizes: torch.Tensor | None = None


def crops_per_image(model, image_sizes: torch.Tensor) -> list[int]:
    """Number of crops (base image + AnyRes sub-images) the processor made for each image."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    config = model.config
    return [
        image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
        for size in image_sizes
    ]


def anyres_grid(model, image_size) -> tuple[int, int]:
    """(rows, cols) of AnyRes sub-images for an image of (height, width) `image_size`."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    config = model.config
    return tuple(
        get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, config.vision_config.image_size)
    )


def _pack(model, per_image: list[torch.Tensor], image_sizes: torch.Tensor, newline: torch.Tensor):
    """The model's own packing (un-pad, newline per row, OneVision's anyres_max interpolation)."""
    config = model.config
    if config.model_type == "llava_next":
        packed, _ = model.model.pack_image_features(
            per_image, image_sizes, config.vision_feature_select_strategy, image_newline=newline
        )
    else:
        packed, _ = model.model.pack_image_features(
            per_image, image_sizes, image_newline=newline, vision_aspect_ratio=config.vision_aspect_ratio
        )
    return packed


BASE, CANVAS = 0, 1  # what a crop coordinate's first channel says: base-image patch, sub-image canvas patch


def crop_coordinates(n_crops: int, grid: tuple[int, int], side: int) -> torch.Tensor:
    """[n_crops, side * side, 3] float (kind, row, col) of every patch of every crop, in the crops' layout before
    packing: the base crop's patches at (BASE, row, col) of its own side x side grid, the patches of sub-image
    k (1-based, raster order over the (rows, cols) grid) at (CANVAS, row, col) of the AnyRes canvas of
    rows * side x cols * side patches."""
    patch = torch.arange(side * side)
    row, col = patch // side, patch % side
    base = torch.stack([torch.full_like(patch, BASE), row, col], dim=-1)[None]  # [1, P, 3]
    sub = torch.arange(n_crops - 1)[:, None]  # [n_crops - 1, 1] 0-based sub-image index
    canvas = torch.stack(
        [
            torch.full((n_crops - 1, side * side), CANVAS),
            (sub // grid[1]) * side + row,
            (sub % grid[1]) * side + col,
        ],
        dim=-1,
    )  # [n_crops - 1, P, 3]
    return torch.cat([base, canvas]).float()


def source_patches(packed: torch.Tensor, grid: tuple[int, int], side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(partition, patch_index) [n] of packed crop coordinates [n, 3]: the patch nearest to each token's position
    (exact where the packing only un-pads; the largest bilinear weight where anyres_max downsampled)."""
    kind, row, col = packed.round().long().unbind(dim=-1)
    partition = torch.where(kind == CANVAS, (row // side) * grid[1] + col // side + 1, 0)
    patch_index = (row % side) * side + col % side
    newline = kind == NEWLINE
    return partition.masked_fill(newline, NEWLINE), patch_index.masked_fill(newline, NEWLINE)


def select_vision_features(model, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The tower layer(s) LLaVA feeds to the projector, without the CLS token under the "default" strategy."""
    config = model.config
    layer = config.vision_feature_layer
    if isinstance(layer, int):
        selected = hidden_states[layer]
    else:
        selected = torch.cat([hidden_states[i] for i in layer], dim=-1)
    if config.vision_feature_select_strategy == "default":
        selected = selected[:, 1:]
    return selected


def encode_images(
    model, pixel_values: torch.Tensor, image_sizes: torch.Tensor, return_hidden_states: bool = False,
    crops: list[int] | None = None,
) -> VisionOutputs:
    """Vision tower + projector + packing for a batch of single-image samples.

    pixel_values: [B, max_crops, 3, H, W] as the LLaVA image processors return it (padded over crops)
    image_sizes:  [B, 2] original (height, width)
    crops:        crops to encode per image: None = all the processor made; 1 = the base image only, which
                  the model's packing treats as a single-crop image (its patches, then one newline token)
    """
    counts = crops_per_image(model, image_sizes)
    if crops is not None:
        if len(crops) != len(counts) or any(n not in (1, full) for n, full in zip(crops, counts)):
            raise ValueError(f"crops must give, per image, 1 (the base image) or all of its {counts} crops, "
                             f"got {crops}")
        counts = list(crops)
    crops = torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)], dim=0)  # [n_crops, 3, H, W]
    tower_out = model.model.vision_tower(crops, output_hidden_states=True, return_dict=True)
    selected = select_vision_features(model, tower_out.hidden_states)  # [n_crops, h*w, d_v]
    projected = model.model.multi_modal_projector(selected)  # [n_crops, h*w, d]
    per_image = list(torch.split(projected, counts, dim=0))
    features = _pack(model, per_image, image_sizes, model.model.image_newline)

    # Pack canvas coordinates through the same code path to learn where every packed token's features come from.
    side = int(round(selected.shape[1] ** 0.5))
    grids = [anyres_grid(model, size) for size in image_sizes]
    coordinates = [crop_coordinates(n_crops, grid, side) for n_crops, grid in zip(counts, grids)]
    packed_coordinates = _pack(model, coordinates, image_sizes, torch.full((3,), float(NEWLINE)))

    images = []
    for feats, coords, grid in zip(features, packed_coordinates, grids):
        partition, patch_index = source_patches(coords, grid, side)
        images.append(
            ImageTokens(features=feats, partition=partition, patch_index=patch_index, grid=grid, patches_per_side=side)
        )
    crop_owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    hidden = tower_out.hidden_states if return_hidden_states else None
    return VisionOutputs(images=images, hidden_states=hidden, crop_owner=crop_owner, image_sizes=image_sizes)


def pack_crop_features(model, vision: VisionOutputs, per_crop: torch.Tensor) -> list[torch.Tensor]:
    """Any per-patch crop features [n_crops, P, c] packed exactly as `encode_images` packed the projector outputs
    (un-padding, OneVision's anyres_max interpolation), with zeros in place of the newline tokens: row i of
    image b's result belongs to token i of `vision.images[b]`. returns [n_b, c] per image."""
    counts = torch.bincount(vision.crop_owner.cpu(), minlength=len(vision.images)).tolist()
    per_image = list(torch.split(per_crop, counts, dim=0))
    newline = torch.zeros(per_crop.shape[-1], dtype=per_crop.dtype, device=per_crop.device)
    return _pack(model, per_image, vision.image_sizes, newline)


def patch_token_count(model, image_size) -> int:
    """Patch tokens (newlines excluded) the model packs for an image the processor gets at (height, width)
    `image_size`: its own packing applied to a placeholder per patch, without running the encoder."""
    config = model.config.vision_config
    side = config.image_size // config.patch_size
    sizes = torch.tensor([list(image_size)])
    n_crops = crops_per_image(model, sizes)[0]
    placeholder = torch.zeros(n_crops, side * side, 1)
    packed = _pack(model, [placeholder], sizes, torch.full((1,), float(NEWLINE)))[0]  # [n, 1]
    return int((packed[:, 0] != NEWLINE).sum())


@dataclass
class SplicedBatch:
    """A left-padded batch of prompt embeddings with the visual tokens in place of `<image>`.

    inputs_embeds:  [B, T, d]
    attention_mask: [B, T] 1 for real tokens
    position_ids:   [B, T] 0.. over the real tokens of each row
    visual_mask:    [B, T] True where a visual token sits
    labels:         [B, T] target ids (-100 where no loss), only when targets were given
    newline_mask:   [B, T] True where one of LLaVA's row-newline tokens sits (a subset of visual_mask), when
                    the batch was spliced from `ImageTokens`
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    visual_mask: torch.Tensor
    labels: torch.Tensor | None = None
    newline_mask: torch.Tensor | None = None


def splice_prompts(
    embed_tokens: nn.Embedding,
    prompt_ids: list[list[int]],
    images: list[ImageTokens],
    image_token_id: int,
    target_ids: list[list[int]] | None = None,
) -> SplicedBatch:
    """Build the LLM input of a batch. Each prompt holds exactly one `<image>` placeholder; `target_ids`
    (training) are appended after the prompt and become the labels."""
    rows, visual_rows, newline_rows, label_rows = [], [], [], []
    for i, (ids, image) in enumerate(zip(prompt_ids, images)):
        if ids.count(image_token_id) != 1:
            raise ValueError(f"prompt {i} must contain exactly one image placeholder, "
                             f"found {ids.count(image_token_id)}")
        cut = ids.index(image_token_id)
        targets = target_ids[i] if target_ids is not None else []
        before = torch.tensor(ids[:cut], dtype=torch.long)
        after = torch.tensor(ids[cut + 1 :] + targets, dtype=torch.long)
        device = image.features.device
        rows.append(
            torch.cat(
                [embed_tokens(before.to(device)), image.features.to(embed_tokens.weight.dtype),
                 embed_tokens(after.to(device))]
            )
        )
        n_visual = image.features.shape[0]
        visual_rows.append(torch.cat([torch.zeros(cut, dtype=torch.bool), torch.ones(n_visual, dtype=torch.bool),
                                      torch.zeros(len(after), dtype=torch.bool)]))
        newline_rows.append(torch.cat([torch.zeros(cut, dtype=torch.bool), image.is_newline.cpu(),
                                       torch.zeros(len(after), dtype=torch.bool)]))
        labels = torch.full((rows[-1].shape[0],), -100, dtype=torch.long)
        if targets:
            labels[-len(targets) :] = torch.tensor(targets, dtype=torch.long)
        label_rows.append(labels)

    length = max(r.shape[0] for r in rows)
    batch, dim = len(rows), rows[0].shape[1]
    device, dtype = rows[0].device, rows[0].dtype
    inputs_embeds = torch.zeros(batch, length, dim, device=device, dtype=dtype)
    attention_mask = torch.zeros(batch, length, dtype=torch.long, device=device)
    position_ids = torch.zeros(batch, length, dtype=torch.long, device=device)
    visual_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
    newline_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
    labels = torch.full((batch, length), -100, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        n = row.shape[0]
        inputs_embeds[i, length - n :] = row
        attention_mask[i, length - n :] = 1
        position_ids[i, length - n :] = torch.arange(n, device=device)
        visual_mask[i, length - n :] = visual_rows[i].to(device)
        newline_mask[i, length - n :] = newline_rows[i].to(device)
        labels[i, length - n :] = label_rows[i].to(device)
    return SplicedBatch(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        visual_mask=visual_mask,
        labels=labels if target_ids is not None else None,
        newline_mask=newline_mask,
    )
