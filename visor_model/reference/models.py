"""Small reference checkpoints of the real LLaVA architecture classes.

The offline profile cannot download LLaVA-OneVision or LLaVA-NeXT, so it builds scaled-down models of
exactly the same transformers classes (`LlavaOnevisionForConditionalGeneration` with a SigLIP encoder and a
Qwen2 LLM using grouped-query attention; `LlavaNextForConditionalGeneration` with a CLIP encoder, which has a
CLS token, and a Llama LLM), with a word-level tokenizer and the PIL image processors. They are saved with
`save_pretrained` and loaded back by `visor_model.llava.checkpoints.load_checkpoint`, the path a hub snapshot takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

FAMILIES = ("llava_onevision", "llava_next")

# LLM depth per family. The OneVision reference is VISOR's host: 12 layers give VISOR's default layout (CA layers
# 0, 3, 6, 9; SA candidates 1, 4, 7, 10) five configurations (0-4 SA layers). The NeXT reference is HiRED's
# CLS-encoder base, where depth changes nothing the audit tests, so it stays at 3 (cheap to evaluate).
TEXT_LAYERS = {"llava_onevision": 12, "llava_next": 3}

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
USER_TAG = "USER:"
ASSISTANT_TAG = "ASSISTANT:"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, EOS_TOKEN, IMAGE_TOKEN, USER_TAG, ASSISTANT_TAG)

# The prompt format of the reference models: "USER: <image>\nquestion ASSISTANT:" + " answer<eos>".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% else %}ASSISTANT: {{ message['content'] }}<eos>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class ReferenceConfig:
    """Geometry of a reference model: LLaVA's design scaled down (336 px crops / 14 px patches -> 48 / 8)."""

    family: str
    crop_size: int = 48
    patch_size: int = 8
    grid_pinpoints: tuple[tuple[int, int], ...] = ((48, 96), (96, 48), (96, 96), (48, 144), (144, 48))
    vision_hidden: int = 32
    vision_layers: int = 3
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int | None = None  # None: TEXT_LAYERS[family]
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 172
    max_position_embeddings: int = 1024

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.text_layers is None:
            object.__setattr__(self, "text_layers", TEXT_LAYERS[self.family])


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (lower-cased) plus LLaVA's special tokens and a chat template."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted({w.lower() for w in words} | set(".,?!:;'\"-")):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IMAGE_TOKEN, USER_TAG, ASSISTANT_TAG],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_reference_model(config: ReferenceConfig, tokenizer: PreTrainedTokenizerFast, seed: int):
    """Randomly initialised model of the real LLaVA class for `config.family`, plus its PIL image processor."""
    torch.manual_seed(seed)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    pinpoints = [list(p) for p in config.grid_pinpoints]
    vision_kwargs = dict(
        hidden_size=config.vision_hidden,
        intermediate_size=4 * config.vision_hidden,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.crop_size,
        patch_size=config.patch_size,
    )
    text_kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    if config.family == "llava_onevision":
        model_config = LlavaOnevisionConfig(
            vision_config=SiglipVisionConfig(**vision_kwargs).to_dict(),
            text_config=Qwen2Config(**text_kwargs).to_dict(),
            image_token_index=image_token_id,
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        )
        model = LlavaOnevisionForConditionalGeneration(model_config)
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": config.crop_size, "width": config.crop_size},
            image_grid_pinpoints=pinpoints,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
        )
    else:
        model_config = LlavaNextConfig(
            vision_config=CLIPVisionConfig(**vision_kwargs).to_dict(),
            text_config=LlamaConfig(**text_kwargs).to_dict(),
            image_token_index=image_token_id,
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        model = LlavaNextForConditionalGeneration(model_config)
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": config.crop_size},
            crop_size={"height": config.crop_size, "width": config.crop_size},
            image_grid_pinpoints=pinpoints,
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, image_processor
