"""One batch of visual questions in, answers and per-sample accounting out.

The runner owns the input pipeline (PIL image processor, chat template, tokenizer, `<image>` splice), so it
works without torchvision and the same code serves training, evaluation and latency measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from visor_model.llava.checkpoints import LoadedCheckpoint
from visor_model.llava.generation import greedy_generate
from visor_model.llava.visual import ImageTokens, SplicedBatch, VisionOutputs, encode_images, splice_prompts
from visor_model.methods.base import TokenReducer


@dataclass
class SampleRecord:
    """What one sample cost and produced."""

    answer: str
    visual_tokens: int  # patch tokens the image produced (newlines excluded)
    visual_tokens_kept: int  # patch tokens that entered the LLM
    newline_tokens_kept: int
    prompt_tokens: int  # LLM prefill length of this sample (text + kept visual tokens)
    generated_tokens: int
    crops: int


def prompt_ids(tokenizer, image_token_id: int, question: str) -> list[int]:
    """Token ids of the chat-formatted prompt with one `<image>` placeholder before the question."""
    if not question or not question.strip():
        raise ValueError("the question is empty")
    image_token = tokenizer.convert_ids_to_tokens(image_token_id)
    messages = [{"role": "user", "content": f"{image_token}\n{question}"}]
    if tokenizer.chat_template is not None:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = messages[0]["content"]
    return tokenizer(text, add_special_tokens=False).input_ids


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, RGBA, P, ...) as RGB; tiny images are enlarged to at least 2 x 2 pixels."""
    image = image.convert("RGB")
    if min(image.size) < 2:
        image = image.resize((max(2, image.size[0]), max(2, image.size[1])))
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

    def process_images(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        processed = self.loaded.image_processor([to_rgb(image) for image in images], return_tensors="pt")
        pixel_values = processed["pixel_values"].to(self.device, self.model.dtype)
        return pixel_values, processed["image_sizes"]

    def visual_tokens(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, sample_keys: list[str]
    ) -> tuple[VisionOutputs, list[ImageTokens]]:
        vision = encode_images(
            self.model, pixel_values, image_sizes, return_hidden_states=self.reducer.needs_vision_hidden_states
        )
        return vision, self.reducer.reduce(self.model, vision, sample_keys)

    def splice(self, prompts: list[list[int]], kept: list[ImageTokens], targets=None) -> SplicedBatch:
        return splice_prompts(
            self.model.get_input_embeddings(), prompts, kept, self.model.config.image_token_id, targets
        )

    def decode(self, batch: SplicedBatch, max_new_tokens: int):
        """Greedy token ids per row, and whatever else the LLM side reports (here nothing)."""
        output = greedy_generate(self.model, batch, max_new_tokens, self.loaded.tokenizer.eos_token_id)
        return output.token_ids, None

    def record(self, row: int, fields: dict, decoded) -> SampleRecord:
        """The record of batch row `row` from the shared `fields` (subclasses add their own)."""
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
        """Greedy answers; sample i stops at eos, after max_new_tokens[i] tokens or at any of until[i]."""
        pixel_values, image_sizes = self.process_images(images)
        prompts = [prompt_ids(self.loaded.tokenizer, self.model.config.image_token_id, q) for q in questions]
        vision, kept = self.visual_tokens(pixel_values, image_sizes, sample_keys)
        batch = self.splice(prompts, kept)
        token_ids, decoded = self.decode(batch, max(max_new_tokens))
        until = until or [[] for _ in questions]
        records = []
        for i, (full, reduced, prompt, ids, n_crops, limit, stops) in enumerate(zip(
            vision.images, kept, prompts, token_ids, vision.crop_owner.bincount().tolist(), max_new_tokens, until,
        )):
            ids = ids[:limit]
            text = self.loaded.tokenizer.decode(ids, skip_special_tokens=True)
            for stop in stops:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            fields = dict(
                answer=text.strip(),
                visual_tokens=full.num_patch_tokens,
                visual_tokens_kept=reduced.num_patch_tokens,
                newline_tokens_kept=int(reduced.is_newline.sum()),
                prompt_tokens=len(prompt) - 1 + reduced.features.shape[0],
                generated_tokens=len(ids),
                crops=n_crops,
            )
            records.append(self.record(i, fields, decoded))
        return records
