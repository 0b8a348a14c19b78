"""Small random-weight checkpoints laid out like the llava-hf hub repositories, built offline.

`write_llava_hf_checkpoint(family, folder)` writes what `llava-hf/llava-onevision-qwen2-0.5b-ov-hf` and
`llava-hf/llava-v1.6-vicuna-7b-hf` ship, with shallow, narrow towers and LLMs but the real image side:

    config.json, generation_config.json, model-0000X-of-0000N.safetensors + model.safetensors.index.json
    tokenizer.json, tokenizer_config.json (no chat template in it), special_tokens_map / added tokens
    preprocessor_config.json   the real image processor config (crop size, grid pinpoints, mean / std)
    processor_config.json      the real processor config (image token, select strategy, patch size)
    chat_template.json         the real chat template, which iterates list content

OneVision: SigLIP 384 px / 14 px patches (729 tokens per crop), `anyres_max_9`, feature layer -1, "full"; a Qwen2
LLM and a Qwen2-style byte-level BPE tokenizer without BOS (eos `<|im_end|>`). NeXT: CLIP 336 px / 14 px with CLS
(576 tokens per crop), feature layer -2, "default"; a Llama LLM and a Llama-style tokenizer (metaspace BPE) that
adds BOS `<s>`. The tokenizers are trained on a few sentences with the `tokenizers` library.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

# chat_template.json of llava-hf/llava-onevision-qwen2-0.5b-ov-hf (as in transformers' processor tests)
OV_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# chat_template.json of llava-hf/llava-v1.6-vicuna-7b-hf (and llava-1.5)
NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}"
    "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

OV_PINPOINTS = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
RESCALE = 1 / 255
PREPROCESSOR_CONFIGS = {
    "llava_onevision": {
        "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
        "image_grid_pinpoints": OV_PINPOINTS, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "LlavaOnevisionImageProcessor", "processor_class": "LlavaOnevisionProcessor",
        "resample": 3, "rescale_factor": RESCALE, "size": {"height": 384, "width": 384},
    },
    "llava_next": {
        "aspect_ratio_setting": "anyres", "crop_size": {"height": 336, "width": 336}, "do_center_crop": True,
        "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
        "image_grid_pinpoints": NEXT_PINPOINTS, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "LlavaNextImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "LlavaNextProcessor", "resample": 3, "rescale_factor": RESCALE,
        "size": {"shortest_edge": 336},
    },
}
PROCESSOR_CONFIGS = {
    "llava_onevision": {"image_token": "<image>", "num_image_tokens": 729, "processor_class": "LlavaOnevisionProcessor",
                        "video_token": "<video>", "vision_feature_select_strategy": "full"},
    "llava_next": {"image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": 14,
                   "processor_class": "LlavaNextProcessor", "vision_feature_select_strategy": "default"},
}
CHAT_TEMPLATES = {"llava_onevision": OV_CHAT_TEMPLATE, "llava_next": NEXT_CHAT_TEMPLATE}

CORPUS = [
    "What is the title of the document? Answer the question using a single word or phrase.",
    "Is there a dog in the image? Please answer yes or no.",
    "Which option is correct? A. red B. blue C. green D. yellow. Answer with the option's letter.",
    "How many people are in the chart, and what does the table say about the year 2019?",
    "The invoice total is 42.50 dollars; the date is March 3rd.",
]


def qwen2_style_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE as Qwen2's, no BOS, `<|im_end|>` as eos, `<|endoftext|>` as pad, `<image>` / `<video>`."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "<image>", "<video>"], padding_side="left",
    )


def llama_style_tokenizer() -> PreTrainedTokenizerFast:
    """Metaspace BPE as Llama / Vicuna's, with a post-processor that adds BOS `<s>`; eos `</s>`, `<image>`."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=list(string.printable),
                                  show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=["<image>"], padding_side="left",
    )


def build_model(family: str, tokenizer, seed: int = 0):
    """A random-weight model of the real class with the real image-side geometry, 1-2 layer towers."""
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if family == "llava_onevision":
        config = LlavaOnevisionConfig(
            vision_config=SiglipVisionConfig(image_size=384, **vision).to_dict(),
            text_config=Qwen2Config(**text).to_dict(),
            image_token_index=image_token_id, video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=OV_PINPOINTS, vision_feature_layer=-1, vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        )
        model = LlavaOnevisionForConditionalGeneration(config)
    else:
        config = LlavaNextConfig(
            vision_config=CLIPVisionConfig(image_size=336, projection_dim=32, **vision).to_dict(),
            text_config=LlamaConfig(bos_token_id=tokenizer.bos_token_id, **text).to_dict(),
            image_token_index=image_token_id, image_grid_pinpoints=NEXT_PINPOINTS, vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        model = LlavaNextForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model.eval()


def write_llava_hf_checkpoint(family: str, folder: Path, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of `family` ("llava_onevision" or "llava_next") in the llava-hf layout."""
    folder = Path(folder)
    tokenizer = qwen2_style_tokenizer() if family == "llava_onevision" else llama_style_tokenizer()
    model = build_model(family, tokenizer, seed)
    model.save_pretrained(folder, max_shard_size="100KB")  # sharded, with model.safetensors.index.json
    tokenizer.save_pretrained(folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    if "chat_template" in tokenizer_config or (folder / "chat_template.jinja").exists():
        raise AssertionError("the llava-hf layout keeps the chat template out of the tokenizer")
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIGS[family], indent=2))
    (folder / "processor_config.json").write_text(json.dumps(PROCESSOR_CONFIGS[family], indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATES[family]}, indent=2))
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
