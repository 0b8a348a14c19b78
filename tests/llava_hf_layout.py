"""Small random-weight checkpoints laid out like the llava-hf hub repositories, for the tests.

The checkpoints are the rehearsal's (`visor_model.rehearsal.checkpoints`: the real image side of
`llava-hf/llava-onevision-qwen2-0.5b-ov-hf` and `llava-hf/llava-v1.6-vicuna-7b-hf`, shallow and narrow towers
and LLMs, Qwen2- and Llama-style tokenizers, chat_template.json with list content), written as a plain folder
rather than a hub snapshot, with a smaller LLM whose embeddings are untied (see GEOMETRY_OF). What is
test-specific stays here: transformers' own processor of such a folder.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from transformers import LlavaOnevisionProcessor

from visor_model.rehearsal.checkpoints import GEOMETRIES, write_checkpoint_folder

# family -> the geometry of its real llava-hf checkpoint, with a 2-layer LLM and untied embeddings: random
# tied embeddings make greedy decoding repeat the last prompt token, a deeper random LLM (the rehearsal's 6-layer
# OneVision one) falls into a repeated token within a few steps, and the stop-string tests need varied answers
GEOMETRY_OF = {geometry.family: replace(geometry, text_layers=2, tie_word_embeddings=False)
               for geometry in GEOMETRIES.values()}


def write_llava_hf_checkpoint(family: str, folder: Path, seed: int = 2) -> Path:
    """Write a random-weight checkpoint of `family` ("llava_onevision" or "llava_next") in the llava-hf layout.

    The default seed is one whose greedy answers to test_generation's questions run past ten tokens without eos
    and have a stop string of whole characters within their first five tokens for both families (the small
    byte-level vocabularies make answers of partial UTF-8 bytes common; seeds 0, 1 and 3 give one)."""
    folder = Path(folder)
    write_checkpoint_folder(GEOMETRY_OF[family], folder, seed)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    if "chat_template" in tokenizer_config or (folder / "chat_template.jinja").exists():
        raise AssertionError("the llava-hf layout keeps the chat template out of the tokenizer")
    return folder


def hf_processor(family: str, folder: Path):
    """transformers' own processor of the checkpoint, as close as this machine allows.

    NeXT: `AutoProcessor.from_pretrained` (a `LlavaNextProcessor` with the PIL image processor; it reads the chat
    template from chat_template.json itself). OneVision: `AutoProcessor` / `LlavaOnevisionProcessor` need
    torchvision for their video processor, so the real `LlavaOnevisionProcessor` code runs without one
    (`ImageOnlyOnevisionProcessor`), built from the PIL image processor, the tokenizer, processor_config.json
    and chat_template.json as `ProcessorMixin.from_pretrained` would."""
    from transformers import AutoProcessor, AutoTokenizer
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    folder = Path(folder)
    if family == "llava_next":
        return AutoProcessor.from_pretrained(folder)
    config = {k: v for k, v in json.loads((folder / "processor_config.json").read_text()).items()
              if k != "processor_class"}
    return ImageOnlyOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil.from_pretrained(folder),
        tokenizer=AutoTokenizer.from_pretrained(folder), video_processor=None,
        chat_template=json.loads((folder / "chat_template.json").read_text())["chat_template"], **config,
    )


class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` with no video processor: the class check of that one needs torchvision."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)
