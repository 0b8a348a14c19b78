"""One batch of visual questions in, answers and per-sample accounting out.

The runner owns the input pipeline (PIL image processor, chat template, tokenizer, `<image>` splice), so it
works without torchvision and the same code serves training, evaluation and latency measurement. The prompt is
what transformers' processor makes of the same turn: the checkpoint's chat template on the conversation it
expects, tokenized with the tokenizer's special tokens (tests/test_generation.py holds the greedy answers equal
to the processor + `generate` on checkpoints in the llava-hf layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from visor_model.llava.checkpoints import LoadedCheckpoint
from visor_model.llava.generation import GreedyOutput, greedy_generate, trim_at_stop
from visor_model.llava.visual import (
    ImageTokens,
    SplicedBatch,
    VisionOutputs,
    crops_per_image,
    encode_images,
    patch_token_count,
    splice_prompts,
)
from visor_model.methods.base import TokenReducer


@dataclass
class SampleRecord:
    """What one sample cost and produced."""

    answer: str
    visual_tokens: int  # patch tokens the image gives the base model (newlines excluded)
    visual_tokens_kept: int  # patch tokens that entered the LLM
    newline_tokens_kept: int
    prompt_tokens: int  # LLM prefill length of this sample (text + kept visual tokens)
    generated_tokens: int  # tokens the model produced for the answer (eos excluded, stop string included)
    crops: int  # crops the vision tower encoded
    finish_reason: str  # "eos", "stop" (a stop string) or "length" (max_new_tokens)
    crop_patches: tuple[int, ...]  # patch tokens of each encoded crop present after packing (un-padding)
    input_scale: float  # long side the image processor got / the image's own long side (1.0 but for downsample)


CONTENT_PROBE = "visor-content-probe"


def renders_string_content(tokenizer) -> bool:
    """Whether the chat template prints a message's `content` as a string (the reference checkpoints' template)
    rather than iterating a list of typed items (llava-hf's chat_template.json, which renders nothing of a
    plain string)."""
    probe = [{"role": "user", "content": CONTENT_PROBE}]
    return CONTENT_PROBE in tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)


def prompt_text(tokenizer, image_token_id: int, question: str) -> str:
    """The chat-formatted prompt with one `<image>` placeholder before the question.

    A template written for list content gets the conversation transformers' processor is given,
    `[{"type": "image"}, {"type": "text", "text": question}]`; one written for strings gets "<image>\\nquestion",
    as does a tokenizer without a template."""
    if not question or not question.strip():
        raise ValueError("the question is empty")
    image_token = tokenizer.convert_ids_to_tokens(image_token_id)
    if tokenizer.chat_template is None:
        return f"{image_token}\n{question}"
    if renders_string_content(tokenizer):
        content = f"{image_token}\n{question}"
    else:
        content = [{"type": "image"}, {"type": "text", "text": question}]
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def prompt_ids(tokenizer, image_token_id: int, question: str) -> list[int]:
    """Token ids of the prompt, with the special tokens the tokenizer adds (Llama/Vicuna: BOS) unless the
    template already wrote BOS: the rule of transformers' `ProcessorMixin.apply_chat_template`."""
    text = prompt_text(tokenizer, image_token_id, question)
    template_wrote_bos = tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token)
    return tokenizer(text, add_special_tokens=not template_wrote_bos).input_ids


def eos_token_ids(tokenizer, model) -> frozenset[int]:
    """The tokens that end an answer: the tokenizer's eos and those of the model's generation config (what
    `generate` stops on; Qwen2 checkpoints list more than one)."""
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if source is not None:
            ids.update([source] if isinstance(source, int) else source)
    return frozenset(ids)


MIN_SIDE = 2  # pixels: smaller images are enlarged (the image processors need at least 2 x 2)


def rgb_size(image: Image.Image) -> tuple[int, int]:
    """The (height, width) of `to_rgb(image)`."""
    return max(MIN_SIDE, image.height), max(MIN_SIDE, image.width)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, RGBA, P, ...) as RGB; tiny images are enlarged to at least 2 x 2 pixels."""
    image = image.convert("RGB")
    if min(image.size) < MIN_SIDE:
        height, width = rgb_size(image)
        image = image.resize((width, height))
    return image


class VisionLanguageRunner:
    """Runs a LLaVA checkpoint with a token-reduction method on batches of (image, question)."""

    def __init__(self, loaded: LoadedCheckpoint, reducer: TokenReducer, device: str = "cpu"):
        self.loaded = loaded
        self.reducer = reducer
        self.device = torch.device(device)

    @property
    def model(self):
        return self.loaded.model

    def input_image(self, image: Image.Image) -> Image.Image:
        """`image` as RGB at the size the method gives it (`TokenReducer.input_size`; bicubic, as the processors
        resize), what the image processor gets."""
        image = to_rgb(image)
        height, width = self.reducer.input_size(self.model, (image.height, image.width))
        if min(height, width) < MIN_SIDE:
            raise ValueError(f"{self.reducer.name} resized an image to {height} x {width} px, below {MIN_SIDE} px")
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        return image

    def process_images(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        processed = self.loaded.image_processor([self.input_image(image) for image in images], return_tensors="pt")
        pixel_values = processed["pixel_values"].to(self.device, self.model.dtype)
        return pixel_values, processed["image_sizes"]

    def visual_tokens(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, sample_keys: list[str]
    ) -> tuple[VisionOutputs, list[ImageTokens]]:
        vision = encode_images(
            self.model, pixel_values, image_sizes, return_hidden_states=self.reducer.needs_vision_hidden_states,
            crops=self.reducer.encoded_crops(self.model, image_sizes),
        )
        return vision, self.reducer.reduce(self.model, vision, sample_keys)

    def base_visual_tokens(self, images: list[Image.Image], vision: VisionOutputs) -> list[int]:
        """Patch tokens each image gives the base model: what the vision side produced, or, where the method
        changed the input (a smaller size, fewer crops), the count at the image's own size (the model's packing)."""
        encoded = vision.crop_owner.bincount(minlength=len(images)).tolist()
        all_crops = crops_per_image(self.model, vision.image_sizes)
        counts = []
        for image, produced, size, n_crops, n_all in zip(images, vision.images, vision.image_sizes.tolist(),
                                                          encoded, all_crops):
            own = rgb_size(image)
            unchanged = tuple(size) == own and n_crops == n_all
            counts.append(produced.num_patch_tokens if unchanged else patch_token_count(self.model, own))
        return counts

    def splice(self, prompts: list[list[int]], kept: list[ImageTokens], targets=None) -> SplicedBatch:
        return splice_prompts(
            self.model.get_input_embeddings(), prompts, kept, self.model.config.image_token_id, targets
        )

    def decode_text(self, ids: list[int]) -> str:
        return self.loaded.tokenizer.decode(ids, skip_special_tokens=True)

    def decode(self, batch: SplicedBatch, max_new_tokens: list[int], until: list[list[str]]) -> GreedyOutput:
        """Greedy decoding; the output has `token_ids` and `finish_reasons` per row (subclasses: more)."""
        return greedy_generate(self.model, batch, max_new_tokens, eos_token_ids(self.loaded.tokenizer, self.model),
                               until, self.decode_text)

    def record(self, row: int, fields: dict, decoded) -> SampleRecord:
        """The record of batch row `row` from the shared `fields` and the decode output (subclasses add theirs)."""
        return SampleRecord(**fields)

    @torch.no_grad()
    def generate(
        self,
        images: list[Image.Image],
        questions: list[str],
        sample_keys: list[str],
        max_new_tokens: list[int],
        until: list[list[str]] | None = None,
    ) -> list[SampleRecord]:
        """Greedy answers; sample i stops at eos, after max_new_tokens[i] tokens or once its text contains any of
        until[i] (lmms-eval's stop strings; the answer ends before the first one)."""
        pixel_values, image_sizes = self.process_images(images)
        prompts = [prompt_ids(self.loaded.tokenizer, self.model.config.image_token_id, q) for q in questions]
        vision, kept = self.visual_tokens(pixel_values, image_sizes, sample_keys)
        base_tokens = self.base_visual_tokens(images, vision)
        batch = self.splice(prompts, kept)
        until = until or [[] for _ in questions]
        decoded = self.decode(batch, list(max_new_tokens), until)
        records = []
        for i, (full, reduced, prompt, ids, reason, n_crops, stops, n_base, image, size) in enumerate(zip(
            vision.images, kept, prompts, decoded.token_ids, decoded.finish_reasons,
            vision.crop_owner.bincount().tolist(), until, base_tokens, images, image_sizes.tolist(),
        )):
            fields = dict(
                answer=trim_at_stop(self.decode_text(ids), stops).strip(),
                visual_tokens=n_base,
                visual_tokens_kept=reduced.num_patch_tokens,
                newline_tokens_kept=int(reduced.is_newline.sum()),
                prompt_tokens=len(prompt) - 1 + reduced.features.shape[0],
                generated_tokens=len(ids),
                crops=n_crops,
                finish_reason=reason,
                crop_patches=full.crop_patches(n_crops),
                input_scale=max(size) / max(rgb_size(image)),
            )
            records.append(self.record(i, fields, decoded))
        return records
