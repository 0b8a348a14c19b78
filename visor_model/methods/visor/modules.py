"""The modules VISOR adds to its host LLM (`VisorModules`): the gated cross-attention blocks, the conditional
positional convolution, the routing token and the router, with their seeded initialisation
(visor_model.methods.visor.modeling assembles them with the host)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visor_model.methods.visor.config import VisorConfig


def _rms_norm_like(host_norm: nn.Module, hidden: int) -> nn.Module:
    norm = type(host_norm)(hidden, eps=host_norm.variance_epsilon)
    norm.weight.data.copy_(host_norm.weight.data)
    return norm


def _torch_default_init(module: nn.Module, generator: torch.Generator) -> None:
    """What nn.Linear / nn.Conv1d's reset_parameters draw, from `generator` instead of the global RNG: weight
    kaiming-uniform(a=sqrt(5)), bias uniform(+-1/sqrt(fan_in)), in that order."""
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
    if module.bias is not None:
        fan_in = module.weight[0].numel()  # in_features (Linear), in_channels / groups * kernel (Conv1d)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def _linear(in_features: int, out_features: int, bias: bool, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with torch's default initialisation drawn from `generator` (the global RNG is not used)."""
    linear = nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)
    _torch_default_init(linear, generator)
    return linear


def _rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2 :], x[..., : x.shape[-1] // 2]), dim=-1)


def _rope(x, cos, sin):
    """x [B, heads, n, hd], cos/sin [B, n, hd]."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class CrossAttention(nn.Module):
    """Gated cross-attention: text queries, visual keys/values, GQA shaped like the host layer.

        out = text + tanh(gate) * o_proj(softmax(q k^T / sqrt(hd)) v)
        q = q_proj(norm_text(text)),  k, v = k_proj / v_proj(norm_visual(visual))
    """

    def __init__(self, host_layer: nn.Module, text_config, config: VisorConfig, generator: torch.Generator):
        super().__init__()
        attn = host_layer.self_attn
        d = text_config.hidden_size
        self.n_heads = text_config.num_attention_heads
        self.n_kv_heads = getattr(text_config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = attn.head_dim
        self.rope = config.ca_rope
        # torch's default init is drawn (from `generator`) even where ca_init replaces it below: it is part of
        # the seeded stream that the later draws (ca_init "random", the routing token) continue
        self.q_proj = _linear(d, self.n_heads * self.head_dim, attn.q_proj.bias is not None, generator)
        self.k_proj = _linear(d, self.n_kv_heads * self.head_dim, attn.k_proj.bias is not None, generator)
        self.v_proj = _linear(d, self.n_kv_heads * self.head_dim, attn.v_proj.bias is not None, generator)
        self.o_proj = _linear(self.n_heads * self.head_dim, d, attn.o_proj.bias is not None, generator)
        self.norm_text = _rms_norm_like(host_layer.input_layernorm, d)
        self.norm_visual = _rms_norm_like(host_layer.input_layernorm, d)
        self.gate = nn.Parameter(torch.tensor(float(config.gate_init)))
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                mine, host = getattr(self, name), getattr(attn, name)
                if config.ca_init == "host":
                    mine.weight.copy_(host.weight)
                    if mine.bias is not None:
                        mine.bias.copy_(host.bias)
                else:
                    nn.init.normal_(mine.weight, std=0.02, generator=generator)
                    if mine.bias is not None:
                        nn.init.zeros_(mine.bias)

    def visual_kv(self, visual: torch.Tensor, rotary: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
        """visual [B, Tv, d] -> keys, values [B, kv, Tv, hd] (computed once per prompt, cached for decoding)."""
        x = self.norm_visual(visual)
        shape = (*x.shape[:2], self.n_kv_heads, self.head_dim)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        if self.rope and rotary is not None:
            k = _rope(k, *rotary)
        return k, v

    def forward(self, text, rotary, kv, visual_valid) -> torch.Tensor:
        """text [B, Tt, d], rotary (cos, sin) [B, Tt, hd], kv from `visual_kv`, visual_valid [B, Tv] bool."""
        x = self.norm_text(text)
        q = self.q_proj(x).view(*x.shape[:2], self.n_heads, self.head_dim).transpose(1, 2)  # [B, h, Tt, hd]
        if self.rope and rotary is not None:
            q = _rope(q, *rotary)
        k, v = kv
        groups = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(groups, dim=1)  # [B, h, Tv, hd]
        v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=visual_valid[:, None, None, :])
        out = out.transpose(1, 2).reshape(*text.shape[:2], -1)  # [B, Tt, h*hd]
        return text + torch.tanh(self.gate) * self.o_proj(out)


class VisorModules(nn.Module):
    """Everything VISOR adds to the host: CA blocks, positional conv, routing token and router.

    Initial weights come from a local generator seeded with `config.seed` (the global RNG is neither used nor
    reseeded), drawn in a fixed order: per CA layer (ascending) q, k, v, o weight + bias, then their
    ca_init="random" weights; the positional conv; the routing token. The router head has its own generator
    (seed + 1, see `make_router`)."""

    def __init__(self, host_layers, text_config, config: VisorConfig, n_viable: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(config.seed)
        d = text_config.hidden_size
        self.cross = nn.ModuleDict(
            {str(layer): CrossAttention(host_layers[layer], text_config, config, generator)
             for layer in config.ca_layers})
        self.pos_conv = None
        if config.conv_kernel and config.ca_layers:
            self.pos_conv = nn.utils.skip_init(nn.Conv1d, d, d, config.conv_kernel, padding=config.conv_kernel // 2,
                                               groups=d)
            _torch_default_init(self.pos_conv, generator)  # drawn, then zeroed: keeps the routing token's draw
            nn.init.zeros_(self.pos_conv.weight)
            nn.init.zeros_(self.pos_conv.bias)
        self.routing_token = None
        self.router = None
        if config.router_layer is not None:
            self.routing_token = nn.Parameter(torch.randn(d, generator=generator) * 0.02)
            if n_viable:
                self.make_router(n_viable, config)

    def make_router(self, n_viable: int, config: VisorConfig) -> None:
        d = self.routing_token.shape[0]
        generator = torch.Generator().manual_seed(config.seed + 1)
        # skip_init: no default init drawn from the global RNG; both layers are set from `generator` below
        router = nn.Sequential(nn.utils.skip_init(nn.Linear, d, config.router_hidden), nn.GELU(),
                               nn.utils.skip_init(nn.Linear, config.router_hidden, n_viable))
        with torch.no_grad():
            for layer in (router[0], router[2]):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(layer.in_features))
                layer.bias.zero_()
        self.router = router.to(self.routing_token.device, self.routing_token.dtype)
