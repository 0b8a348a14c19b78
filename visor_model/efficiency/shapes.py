"""The sizes of a LLaVA-NeXT / LLaVA-OneVision model that its FLOPs depend on (`LlavaShape`: the LLM, the
vision tower, the projector), read from a transformers config, and `check_count`, the check of every count that
the shapes and the FLOP formulas (`visor_model.efficiency.flops`) take.

    shape = LlavaShape.from_config(model.config)        # LlavaNextConfig or LlavaOnevisionConfig
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def check_count(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Return `value` as an int, or raise ValueError naming `name` (NaN, inf, negative, zero, fractional)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")  # noqa: TRY004
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite integer, got {value!r}")
    if int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value




@dataclass(frozen=True)
class LLMShape:
    """Sizes of a decoder-only LLM with grouped-query attention and a SwiGLU MLP (Qwen2, Llama)."""

    hidden: int  # d, the residual width
    intermediate: int  # m, the MLP width (gate_proj/up_proj: d -> m, down_proj: m -> d)
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (== n_heads without GQA)
    head_dim: int  # q_proj: d -> n_heads * head_dim; k_proj/v_proj: d -> n_kv_heads * head_dim
    vocab: int  # lm_head: d -> vocab

    def __post_init__(self):
        for name in ("hidden", "intermediate", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab"):
            object.__setattr__(self, name, check_count(name, getattr(self, name)))
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @classmethod
    def from_config(cls, config) -> LLMShape:
        """From a transformers text config (Qwen2Config, LlamaConfig, or any config with the same fields).

        ``head_dim`` follows the modeling code: ``config.head_dim`` if set, else hidden // heads.
        Sliding-window attention is not modelled; a config that uses it is rejected.
        """
        n_heads = config.num_attention_heads
        n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        layer_types = getattr(config, "layer_types", None) or ()
        if getattr(config, "use_sliding_window", False) and any(t != "full_attention" for t in layer_types):
            raise NotImplementedError("sliding-window attention layers are not modelled by "
                                      "visor_model.efficiency.flops")
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            n_layers=config.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            vocab=config.vocab_size,
        )


@dataclass(frozen=True)
class VisionShape:
    """Sizes of a ViT image encoder (CLIP or SigLIP vision tower): patch conv, then pre-norm layers
    with multi-head attention (q/k/v/out: hidden -> hidden) and a 2-matrix GELU MLP (fc1, fc2)."""

    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    image_size: int  # square crop side, pixels
    patch_size: int  # patch conv kernel == stride
    num_channels: int = 3
    has_cls: bool = False  # CLIP prepends a CLS token; SigLIP does not
    use_head: bool = False  # SigLIP attention-pooling head (``vision_use_head``); LLaVA-OV turns it off

    def __post_init__(self):
        for name in ("hidden", "intermediate", "n_layers", "n_heads", "image_size", "patch_size", "num_channels"):
            object.__setattr__(self, name, check_count(name, getattr(self, name)))
        if self.hidden % self.n_heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of n_heads ({self.n_heads})")
        if self.patch_size > self.image_size:
            raise ValueError(f"patch_size ({self.patch_size}) must not exceed image_size ({self.image_size})")

    @property
    def n_patches(self) -> int:
        """Patches per crop: floor(image_size / patch_size)^2 (the stride-patch conv drops the remainder),
        e.g. 24^2 = 576 for CLIP-L/14-336 and floor(384 / 14)^2 = 27^2 = 729 for SigLIP-so400m/14-384."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens_per_crop(self) -> int:
        """Sequence length inside the encoder: patches, plus 1 for CLIP's CLS token."""
        return self.n_patches + (1 if self.has_cls else 0)

    @classmethod
    def from_config(cls, config) -> VisionShape:
        """From a CLIPVisionConfig (CLS token) or SiglipVisionConfig (no CLS token)."""
        model_type = getattr(config, "model_type", "")
        if "clip" in model_type:
            has_cls = True
        elif "siglip" in model_type:
            has_cls = False
        else:
            raise ValueError(f"config must be a CLIP or SigLIP vision config, got model_type={model_type!r}")
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            n_layers=config.num_hidden_layers,
            n_heads=config.num_attention_heads,
            image_size=config.image_size,
            patch_size=config.patch_size,
            num_channels=getattr(config, "num_channels", 3),
            has_cls=has_cls,
            use_head=bool(getattr(config, "vision_use_head", False)),
        )


@dataclass(frozen=True)
class ProjectorShape:
    """LLaVA-NeXT / LLaVA-OneVision ``multi_modal_projector``:
    linear_1 (in_features -> out_features), GELU, linear_2 (out_features -> out_features).

    ``in_features`` = vision hidden x number of vision feature layers (HF concatenates the selected
    layers' hidden states when ``vision_feature_layer`` is a list); ``out_features`` = text hidden.
    """

    in_features: int
    out_features: int

    def __post_init__(self):
        for name in ("in_features", "out_features"):
            object.__setattr__(self, name, check_count(name, getattr(self, name)))

    @classmethod
    def from_config(cls, config) -> ProjectorShape:
        """From a LlavaNextConfig / LlavaOnevisionConfig (mirrors ``LlavaNextMultiModalProjector.__init__``)."""
        layers = config.vision_feature_layer
        n_feature_layers = 1 if isinstance(layers, int) else len(layers)
        return cls(
            in_features=config.vision_config.hidden_size * n_feature_layers,
            out_features=config.text_config.hidden_size,
        )


def vision_layers_needed(n_layers: int, vision_feature_layer: int | Sequence[int]) -> int:
    """How many encoder layers must run to produce ``hidden_states[vision_feature_layer]``.

    ``hidden_states`` has n_layers + 1 entries (index 0 = patch embeddings), so -1 needs all layers,
    -2 (LLaVA-1.5/NeXT) needs n_layers - 1. **HF still runs the whole tower** (it asks for all hidden
    states), so the FLOPs actually spent use all layers; this is what an efficient implementation needs.
    """
    n_layers = check_count("n_layers", n_layers)
    indices = [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)
    if not indices:
        raise ValueError("vision_feature_layer must not be empty")
    needed = 0
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -(n_layers + 1) <= i <= n_layers:
            raise ValueError(f"vision_feature_layer {i!r} is out of range for {n_layers} layers")
        needed = max(needed, i if i >= 0 else n_layers + 1 + i)
    return needed


@dataclass(frozen=True)
class LlavaShape:
    """Everything needed to count a LLaVA-NeXT / LLaVA-OneVision forward."""

    llm: LLMShape
    vision: VisionShape
    projector: ProjectorShape
    vision_feature_layer: int | tuple[int, ...] = -1
    vision_feature_select_strategy: str = "full"  # "default" drops the first token (CLS) before the projector

    def __post_init__(self):
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                "vision_feature_select_strategy must be 'default' or 'full', "
                f"got {self.vision_feature_select_strategy!r}"
            )
        if not isinstance(self.vision_feature_layer, int):
            object.__setattr__(self, "vision_feature_layer", tuple(self.vision_feature_layer))
        vision_layers_needed(self.vision.n_layers, self.vision_feature_layer)  # validates the index

    @property
    def projector_tokens_per_crop(self) -> int:
        """Tokens per crop that go through the projector: encoder tokens minus the first one when the
        strategy is "default" (576 for LLaVA-NeXT's CLIP, 729 for LLaVA-OV's SigLIP with "full")."""
        drop = 1 if self.vision_feature_select_strategy == "default" else 0
        return self.vision.tokens_per_crop - drop

    @property
    def vision_layers_needed(self) -> int:
        return vision_layers_needed(self.vision.n_layers, self.vision_feature_layer)

    @classmethod
    def from_config(cls, config) -> LlavaShape:
        """From a LlavaNextConfig or LlavaOnevisionConfig."""
        layer = config.vision_feature_layer
        return cls(
            llm=LLMShape.from_config(config.text_config),
            vision=VisionShape.from_config(config.vision_config),
            projector=ProjectorShape.from_config(config),
            vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )

