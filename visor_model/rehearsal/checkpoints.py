"""Random-weight rehearsal checkpoints with the real image-side geometry of the papers' checkpoints, written in
the Hugging Face hub cache layout at a pinned revision.

A rehearsal checkpoint keeps everything that decides how an image becomes visual tokens: the vision tower's
image and patch size (729 tokens per crop for SigLIP-384/14, 576 for CLIP-336/14), the grid pinpoints, OV's
`anyres_max_9`, the feature layer and select strategy (CLS dropped or not), the image newline, and the
processor configs as the llava-hf repositories ship them. Towers and LLMs are shallow and narrow so that a
whole paper profile runs on a CPU. Tokenizers are built here with the `tokenizers` library: Qwen2-style
(byte-level BPE, no BOS) for OneVision, Llama-style (Metaspace BPE with byte fallback, adds BOS) for NeXT;
the chat template is in `chat_template.json` with list content, as in the llava-hf repositories, and not in
the tokenizer config.

Values written from knowledge of the llava-hf repositories and transformers' defaults, not read from the hub
(no hub access here): the processor configs and chat templates below. Token ids differ from the real ones
(the vocabularies are small); image token, BOS/EOS and pad are wherever the local tokenizer puts them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# The llava-hf chat templates (chat_template.json): user content is a list of {"type": "image"} and
# {"type": "text", "text": ...} items; images are rendered before the text. OneVision's ends a turn with
# `<|im_end|>` and no newline (as in transformers' LlavaOnevisionProcessor tests); NeXT's is Vicuna's.
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
VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}"
    "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class Geometry:
    """The image side of a real checkpoint, and the small sizes of its rehearsal stand-in."""

    family: str  # llava_onevision or llava_next
    tokenizer_style: str  # qwen2 (no BOS) or llama (adds BOS)
    vision_model_type: str
    image_size: int
    patch_size: int
    image_grid_pinpoints: list
    vision_feature_layer: int
    vision_feature_select_strategy: str
    image_mean: list
    image_std: list
    chat_template: str
    vision_aspect_ratio: str | None = None  # OneVision only
    text_model_type: str = "qwen2"
    vision_hidden: int = 32
    vision_layers: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    vocab_size: int = 600
    # None: as the real LLM (Qwen2-0.5B ties its input and output embeddings, Vicuna does not). Random tied
    # embeddings make greedy decoding repeat the last prompt token; tests that need varied answers untie them.
    tie_word_embeddings: bool | None = None

    @property
    def ties_embeddings(self) -> bool:
        return self.text_model_type == "qwen2" if self.tie_word_embeddings is None else self.tie_word_embeddings

    @property
    def tokens_per_crop(self) -> int:
        return (self.image_size // self.patch_size) ** 2


GEOMETRIES = {
    # SigLIP-so400m at 384 px, patch 14: 27 x 27 = 729 tokens per crop, no CLS (strategy full, last layer);
    # pinpoints every (i, j) x 384 for i, j in 1..6; anyres_max_9 pools grids above 9 crops.
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": Geometry(
        family="llava_onevision", tokenizer_style="qwen2", vision_model_type="siglip_vision_model",
        image_size=384, patch_size=14,
        image_grid_pinpoints=[[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)],
        vision_feature_layer=-1, vision_feature_select_strategy="full", image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], chat_template=OV_CHAT_TEMPLATE, vision_aspect_ratio="anyres_max_9",
        text_model_type="qwen2", text_layers=6,  # VISOR places L/3 CA and SA layers: 2 + 2 of 6
    ),
    # CLIP ViT-L/14 at 336 px: 24 x 24 = 576 patch tokens per crop plus CLS, dropped (strategy default) from
    # the second-to-last layer; LLaVA-1.6's five pinpoints.
    "llava-hf/llava-v1.6-vicuna-7b-hf": Geometry(
        family="llava_next", tokenizer_style="llama", vision_model_type="clip_vision_model",
        image_size=336, patch_size=14,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_mean=CLIP_MEAN,
        image_std=CLIP_STD, chat_template=VICUNA_CHAT_TEMPLATE, text_model_type="llama",
    ),
}


# ----------------------------------------------------------------------------------------------------------
# Tokenizers


def _corpus() -> list[str]:
    """Text the small BPE vocabularies are learned from: lmms-eval's prompt phrasing and common answers."""
    lines = [
        "Answer the question using a single word or phrase.",
        "Answer with the option's letter from the given choices directly.",
        "Answer the question with a single word.",
        "Is there a cat in the image? Please answer yes or no.",
        "What is the title of the document? What is the value in the chart for 2019?",
        "Question: Options: A. B. C. D. Hint: Context: The answer is",
        "USER: ASSISTANT: yes no red blue green one two three four five 0 1 2 3 4 5 6 7 8 9 %",
    ]
    return lines * 20


def build_tokenizer(style: str, vocab_size: int):
    """A `tokenizers.Tokenizer` in the style of Qwen2 (byte-level, no BOS) or Llama (Metaspace, byte fallback,
    BOS prepended by the post-processor); returns it with its special tokens (name -> token)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if style == "qwen2":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tokenizer.train_from_iterator(_corpus(), trainer)
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        special = {"pad": "<|endoftext|>", "im_start": "<|im_start|>", "eos": "<|im_end|>", "image": "<image>",
                   "video": "<video>"}
        tokenizer.add_special_tokens(list(special.values()))
        return tokenizer, special
    if style == "llama":
        trained = Tokenizer(models.BPE(unk_token="<unk>"))
        trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                      show_progress=False)
        trained.train_from_iterator(_corpus(), trainer)
        # Llama's layout: <unk> <s> </s>, the 256 byte-fallback tokens, then the learned pieces
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{i:02X}>": 3 + i for i in range(256)}
        for token, _ in sorted(trained.get_vocab().items(), key=lambda item: item[1]):
            vocab.setdefault(token, len(vocab))
        merges = [tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)
                  for merge in json.loads(trained.to_str())["model"]["merges"]]
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                         fuse_unk=True))
        tokenizer.normalizer = trained.normalizer
        tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                               decoders.Strip(" ", 1, 0)])
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
        special = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "image": "<image>", "pad": "<pad>"}
        tokenizer.add_special_tokens(list(special.values()))
        return tokenizer, special
    raise ValueError(f"unknown tokenizer style {style!r}; expected qwen2 or llama")


def tokenizer_config(style: str, tokenizer, special: dict) -> dict:
    added = {str(tokenizer.token_to_id(token)): {"content": token, "lstrip": False, "rstrip": False,
                                                  "normalized": False, "single_word": False, "special": True}
             for token in dict.fromkeys(special.values())}
    if style == "qwen2":
        return {"added_tokens_decoder": added, "bos_token": None, "eos_token": special["eos"],
                "pad_token": special["pad"], "errors": "replace", "model_max_length": 32768,
                "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    return {"added_tokens_decoder": added, "add_bos_token": True, "add_eos_token": False, "bos_token": special["bos"],
            "eos_token": special["eos"], "unk_token": special["unk"], "pad_token": special["pad"], "legacy": False,
            "model_max_length": 4096, "padding_side": "left", "tokenizer_class": "LlamaTokenizer"}


# ----------------------------------------------------------------------------------------------------------
# Model, processor and the hub layout


def model_config(geometry: Geometry, ids: dict) -> dict:
    """config.json of the rehearsal model (a dict transformers' config classes accept)."""
    vision = {"model_type": geometry.vision_model_type, "hidden_size": geometry.vision_hidden,
              "intermediate_size": 2 * geometry.vision_hidden, "num_hidden_layers": geometry.vision_layers,
              "num_attention_heads": 2, "image_size": geometry.image_size, "patch_size": geometry.patch_size,
              "num_channels": 3}
    if geometry.vision_model_type == "siglip_vision_model":
        vision["vision_use_head"] = False
    else:
        vision["projection_dim"] = geometry.vision_hidden
    text = {"model_type": geometry.text_model_type, "hidden_size": geometry.text_hidden,
            "intermediate_size": 2 * geometry.text_hidden, "num_hidden_layers": geometry.text_layers,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": ids["vocab_size"],
            "max_position_embeddings": 32768, "bos_token_id": ids.get("bos"), "eos_token_id": ids["eos"],
            "pad_token_id": ids["pad"], "tie_word_embeddings": geometry.ties_embeddings}
    config = {"model_type": geometry.family, "vision_config": vision, "text_config": text,
              "image_token_index": ids["image"], "image_grid_pinpoints": geometry.image_grid_pinpoints,
              "vision_feature_layer": geometry.vision_feature_layer,
              "vision_feature_select_strategy": geometry.vision_feature_select_strategy,
              "projector_hidden_act": "gelu", "tie_word_embeddings": text["tie_word_embeddings"]}
    if geometry.family == "llava_onevision":
        config |= {"vision_aspect_ratio": geometry.vision_aspect_ratio, "video_token_index": ids["video"]}
    return config


def preprocessor_config(geometry: Geometry) -> dict:
    """preprocessor_config.json as the llava-hf repositories have it (written from knowledge, see module doc)."""
    side = geometry.image_size
    common = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
              "image_grid_pinpoints": geometry.image_grid_pinpoints, "image_mean": geometry.image_mean,
              "image_std": geometry.image_std, "resample": 3, "rescale_factor": 1 / 255}
    if geometry.family == "llava_onevision":
        return common | {"crop_size": {"height": side, "width": side}, "do_pad": True,
                         "image_processor_type": "LlavaOnevisionImageProcessor",
                         "processor_class": "LlavaOnevisionProcessor", "size": {"height": side, "width": side}}
    return common | {"aspect_ratio_setting": "anyres", "crop_size": {"height": side, "width": side},
                     "do_center_crop": True, "do_pad": True,
                     "image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor",
                     "size": {"shortest_edge": side}}


def processor_config(geometry: Geometry) -> dict:
    """processor_config.json as the llava-hf repositories have it: NeXT's names the patch size and the CLS token
    (one additional image token), OneVision's the tokens per crop and the video token."""
    config = {"image_token": "<image>", "processor_class": preprocessor_config(geometry)["processor_class"],
              "vision_feature_select_strategy": geometry.vision_feature_select_strategy}
    if geometry.family == "llava_onevision":
        return config | {"num_image_tokens": geometry.tokens_per_crop, "video_token": "<video>"}
    return config | {"num_additional_image_tokens": 1, "patch_size": geometry.patch_size}


def write_checkpoint_folder(geometry: Geometry, folder: Path, seed: int, max_shard_size: str = "300KB") -> None:
    """save_pretrained-style folder: sharded safetensors with their index, config, generation config, tokenizer,
    processor configs and chat_template.json."""
    import torch
    import transformers

    tokenizer, special = build_tokenizer(geometry.tokenizer_style, geometry.vocab_size)
    ids = {name: tokenizer.token_to_id(token) for name, token in special.items()}
    ids["vocab_size"] = tokenizer.get_vocab_size()
    config = model_config(geometry, ids)
    config_class = transformers.AutoConfig.for_model(config.pop("model_type")).__class__
    model_class = getattr(transformers, {"llava_onevision": "LlavaOnevisionForConditionalGeneration",
                                         "llava_next": "LlavaNextForConditionalGeneration"}[geometry.family])
    torch.manual_seed(seed)
    model = model_class(config_class(**config))
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids.get("bos"), eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    model.save_pretrained(str(folder), safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save(str(folder / "tokenizer.json"))
    files = {
        "tokenizer_config.json": tokenizer_config(geometry.tokenizer_style, tokenizer, special),
        "special_tokens_map.json": {f"{name}_token": token for name, token in special.items()
                                    if name in ("bos", "eos", "unk", "pad")},
        "preprocessor_config.json": preprocessor_config(geometry),
        "processor_config.json": processor_config(geometry),
        "chat_template.json": {"chat_template": geometry.chat_template},
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")
    if not (folder / "model.safetensors.index.json").is_file():
        raise ValueError(f"max_shard_size {max_shard_size} left the weights of {folder} in one file; expected shards")


def git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_hub_snapshot(folder: Path, cache: Path, repo: str, revision: str) -> Path:
    """Lay the files of `folder` out as the hub cache does: blobs named by their git hash (sha256 for the
    safetensors, stored with LFS on the hub), `snapshots/<revision>/<file>` linking to them, `refs/main`
    naming the revision. Returns the snapshot folder."""
    org, name = repo.split("/")
    root = Path(cache) / f"models--{org}--{name}"
    snapshot = root / "snapshots" / revision
    if snapshot.exists():
        shutil.rmtree(snapshot)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        blob = root / "blobs" / (sha256(file) if file.suffix == ".safetensors" else git_blob_sha1(file))
        if not blob.exists():
            shutil.copyfile(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


def write_rehearsal_checkpoint(geometry_of: str, repo: str, revision: str, cache: Path, seed: int) -> dict:
    """Build the rehearsal checkpoint of real checkpoint `geometry_of` and write it into the HF cache `cache`
    as `repo` at `revision`; returns a record of what was written."""
    if geometry_of not in GEOMETRIES:
        raise ValueError(f"no rehearsal geometry for {geometry_of!r}; known: {', '.join(GEOMETRIES)}")
    geometry = GEOMETRIES[geometry_of]
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint_folder(geometry, Path(tmp), seed)
        snapshot = write_hub_snapshot(Path(tmp), cache, repo, revision)
    return {"repo": repo, "revision": revision, "geometry_of": geometry_of, "snapshot": str(snapshot),
            "tokens_per_crop": geometry.tokens_per_crop, "files": sorted(p.name for p in snapshot.iterdir())}
