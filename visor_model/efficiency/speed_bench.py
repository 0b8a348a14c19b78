"""Side-by-side prefill speed benchmark of every method on one architecture, in one process, on the same inputs.

    # GPU: full shapes, bf16, SDPA
    python -m visor_model.efficiency.speed_bench
    # CPU
    python -m visor_model.efficiency.speed_bench --arch llava-ov-0.5b --layers 6 --token-scale 0.25 --dtype float32

For each architecture the LLM side is built directly from its config (a Qwen2 or Llama decoder with the real
widths, random weights, optionally only `--layers` of its layers) plus an LM head; the vision tower is not
built: the prompt is `n_text` text-token embeddings with `n_visual` synthetic visual-token embeddings spliced in
after the first few (the architecture's real visual-token count: 7,290 for LLaVA-OneVision's anyres_max_9, 10
crops x 729; 2,880 for LLaVA-NeXT, 5 crops x 576). Every method then runs greedy generation (end-of-sequence
disabled) through the project's own generation code on the same inputs:

    llava_full          the host model on all visual tokens (`visor_model.llava.generation.greedy_generate`)
    hired@20%           the host on 20% of the visual tokens. HiRED's choice of tokens does not change the LLM's
                        work; its scoring runs on the vision side, which this bench leaves out (its FLOPs are
                        in `flops_selection` of the accounting)
    random_drop@20%     the same number of tokens: identical LLM work, so hired vs random_drop is a noise floor
    visor[sa=k]         `VisorModel.generate` with the smallest (0 SA layers: CA only) and the largest (all L/3
                        SA candidates) configuration of `VisorConfig.family()` on the (capped) depth
    visor-tr[sa=k]      the largest configuration on 20% of the visual tokens (VISOR + token reduction)

Per method: prefill time (start of the LLM to the first token's logits; CUDA events / perf_counter, see
`visor_model.efficiency.latency`), median and IQR over `--repeats` after `--warmup` (the methods are interleaved: each
repeat times every method once), per-token decode time, and the
analytic LLM prefill FLOPs (causal, + the LM head on one position) of exactly these shapes. Printed:
speed-up = t(full) / t(method), FLOP ratio = FLOPs(method) / FLOPs(full), and their product, the realised
share of the theoretical saving (1.0: the time fell as much as the FLOPs; below 1: overheads that FLOPs do not
see, e.g. kernel launch and Python per layer, memory-bound projections, masks that disable fused kernels).
On CUDA also the prefill MFU of the full model: its FLOPs / time / the device's peak dense bf16 FLOP/s
(`PEAK_TFLOPS`, or `--peak-tflops`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from visor_model import provenance
from visor_model.devices import resolve_device
from visor_model.efficiency.accounting import llm_prefill_flops
from visor_model.efficiency.flops import lm_head_flops
from visor_model.efficiency.latency import Clock, stats, timed_generation
from visor_model.efficiency.shapes import LLMShape
from visor_model.llava.generation import greedy_generate
from visor_model.llava.visual import SplicedBatch

# Peak dense (no sparsity) bf16 tensor-core FLOP/s by device name, from NVIDIA's data sheets. Checked in order:
# the first substring contained in torch.cuda.get_device_name() wins.
PEAK_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.4),  # H200 SXM: same tensor cores and clocks as H100 SXM
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # H100 SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.1),
)


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS:
        if key in device_name:
            return value
    return None


@dataclass(frozen=True)
class Architecture:
    """An LLM shape and the visual / text tokens its LLaVA host feeds it."""

    name: str
    decoder: str  # "qwen2" | "llama"
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    n_visual: int
    n_text: int
    note: str = ""

    def config(self, layers: int | None = None, vocab: int | None = None, attn: str = "sdpa"):
        from transformers import LlamaConfig, Qwen2Config

        cls = Qwen2Config if self.decoder == "qwen2" else LlamaConfig
        config = cls(hidden_size=self.hidden, intermediate_size=self.intermediate,
                     num_hidden_layers=layers or self.layers, num_attention_heads=self.heads,
                     num_key_value_heads=self.kv_heads, vocab_size=vocab or self.vocab,
                     max_position_embeddings=max(32768, 2 * (self.n_visual + self.n_text)), tie_word_embeddings=False)
        config._attn_implementation = attn
        return config


def reference_architecture(name: str, family: str, note: str) -> Architecture:
    """The LLM of a reference model (`visor_model.reference.models.ReferenceConfig` defaults, the synthetic benchmarks'
    vocabulary): 192 visual tokens = a 2x2 AnyRes grid of 48-px crops (5 x 36 patches) + 12 row newlines, the
    largest the synthetic images produce; 8 text tokens."""
    from visor_model.reference.models import ReferenceConfig, build_tokenizer
    from visor_model.reference.tasks import vocabulary

    c = ReferenceConfig(family=family)
    decoder = "qwen2" if family == "llava_onevision" else "llama"
    return Architecture(name, decoder, c.text_hidden, c.text_intermediate, c.text_layers, c.text_heads,
                        c.text_kv_heads, len(build_tokenizer(vocabulary())), 192, 8, note)


ARCHITECTURES = {a.name: a for a in (
    reference_architecture("reference_ov", "llava_onevision", "LlavaOnevision reference (Qwen2)"),
    reference_architecture("reference_next", "llava_next", "LlavaNext reference (Llama)"),
    # hub models: LLM shapes of their text configs; 64 text tokens (system prompt + question)
    Architecture("llava-ov-0.5b", "qwen2", 896, 4864, 24, 14, 2, 151936, 7290, 64,
                 "llava-onevision-qwen2-0.5b-ov (Qwen2-0.5B), anyres_max_9: 10 x 729 tokens"),
    Architecture("llava-ov-7b", "qwen2", 3584, 18944, 28, 28, 4, 152064, 7290, 64,
                 "llava-onevision-qwen2-7b-ov (Qwen2-7B), anyres_max_9: 10 x 729 tokens"),
    Architecture("llava-next-7b", "llama", 4096, 11008, 32, 32, 32, 32064, 2880, 64,
                 "llava-v1.6-vicuna-7b (Vicuna-7B), anyres 5 x 576 tokens"),
)}


class _Inner(nn.Module):
    def __init__(self, language_model):
        super().__init__()
        self.language_model = language_model

    def get_input_embeddings(self):
        return self.language_model.embed_tokens


class LLMHost(nn.Module):
    """The attributes of a LLaVA model that `greedy_generate` and `VisorModel` use: `.model.language_model`,
    `.lm_head`, `get_input_embeddings()`."""

    def __init__(self, config):
        super().__init__()
        from transformers import AutoModel

        self.model = _Inner(AutoModel.from_config(config))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.config = config

    def get_input_embeddings(self):
        return self.model.language_model.embed_tokens


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_host(arch: Architecture, layers: int | None, vocab: int | None, dtype: torch.dtype, device: str) -> LLMHost:
    with torch.device(device), default_dtype(dtype):
        host = LLMHost(arch.config(layers, vocab))
    return host.eval()


def synthetic_batch(host: LLMHost, n_text: int, n_visual: int, seed: int = 0, text_before: int = 5,
                    batch_size: int = 1) -> SplicedBatch:
    """`batch_size` copies of one prompt: `text_before` text tokens, `n_visual` visual-token embeddings, the
    remaining text tokens."""
    embed = host.get_input_embeddings()
    device, dtype = embed.weight.device, embed.weight.dtype
    generator = torch.Generator().manual_seed(seed)
    text_before = min(text_before, n_text - 1)
    ids = torch.randint(0, embed.num_embeddings, (n_text,), generator=generator).to(device)
    visual = (torch.randn(n_visual, embed.embedding_dim, generator=generator) * 0.02).to(device, dtype)
    with torch.no_grad():
        text = embed(ids)
    inputs = torch.cat([text[:text_before], visual, text[text_before:]])[None].repeat(batch_size, 1, 1)
    B, T = inputs.shape[:2]
    visual_mask = torch.zeros(B, T, dtype=torch.bool, device=device)
    visual_mask[:, text_before : text_before + n_visual] = True
    return SplicedBatch(inputs_embeds=inputs, attention_mask=torch.ones(B, T, dtype=torch.long, device=device),
                        position_ids=torch.arange(T, device=device)[None].repeat(B, 1), visual_mask=visual_mask)


@dataclass(frozen=True)
class Setting:
    method: str
    kept: float  # fraction of visual tokens entering the LLM
    sa: str | None = None  # None: host model; "min" / "max": a VISOR configuration


SETTINGS = (
    Setting("llava_full", 1.0),
    Setting("hired@20%", 0.2),
    Setting("random_drop@20%", 0.2),
    Setting("visor[min]", 1.0, "min"),
    Setting("visor[max]", 1.0, "max"),
    Setting("visor-tr[max]@20%", 0.2, "max"),
)


def run_bench(arch: Architecture, layers: int | None = None, n_visual: int | None = None, n_text: int | None = None,
              vocab: int | None = None, dtype: str = "auto", device: str = "auto", warmup: int = 1, repeats: int = 3,
              max_new_tokens: int = 4, threads: int | None = None, settings=SETTINGS, budget: float = 0.2,
              peak: float | None = None, batch_size: int = 1, log=print) -> dict:
    """Times every setting's generation on the same synthetic prompts (`batch_size` copies of one prompt per
    forward: batch 1 measures latency, a larger batch throughput, where fixed per-call costs are shared)."""
    from visor_model.methods.visor.modeling import VisorConfig, VisorModel

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    torch_dtype = getattr(torch, dtype)
    n_visual = arch.n_visual if n_visual is None else n_visual
    n_text = arch.n_text if n_text is None else n_text
    host = build_host(arch, layers, vocab, torch_dtype, device)
    config = host.model.language_model.config
    L = config.num_hidden_layers
    visor = VisorModel(host, VisorConfig(n_layers=L, router_hidden=0)).eval()
    family = visor.config.family()
    shape = LLMShape.from_config(config)
    clock = Clock(torch.device(device))
    batches, plans = {}, []
    for setting in settings:
        kept = n_visual if setting.kept >= 1.0 else max(1, math.floor(budget * n_visual + 1e-9))
        if kept not in batches:
            batches[kept] = synthetic_batch(host, n_text, kept, batch_size=batch_size)
        active = None if setting.sa is None else (family[0] if setting.sa == "min" else family[-1])
        plans.append((setting, kept, active, None if active is None else visor.config.roles(active)))

    def runner(kept, active):
        batch = batches[kept]
        if active is None:
            return lambda: greedy_generate(host, batch, max_new_tokens, None)
        return lambda: visor.generate(batch, max_new_tokens, None, active=active)

    runs = [runner(kept, active) for _, kept, active, _ in plans]
    timings = [[] for _ in plans]
    load_before = _load()
    with torch.no_grad():
        for _ in range(warmup):
            for run in runs:
                timed_generation(host.lm_head, clock, run)
        # round robin: every repeat times every method once, so that slow drifts of a shared machine's load
        # spread over all methods instead of landing on whichever ran during them
        for _ in range(repeats):
            for i, run in enumerate(runs):
                timings[i].append(timed_generation(host.lm_head, clock, run)[0])
    rows = []
    for (setting, kept, active, roles), timing in zip(plans, timings):
        conv = visor.config.conv_kernel if roles else 0
        flops = batch_size * (llm_prefill_flops(shape, n_text, kept, "causal", roles, conv).total
                              + lm_head_flops(shape, 1).total)
        prefill = stats([t.prefill_s for t in timing])
        decode = stats([s for t in timing for s in t.decode_steps_s])
        label = setting.method if active is None else setting.method.replace(setting.sa, f"sa={len(active)}")
        rows.append({"method": label, "visual_tokens": kept, "sa_layers": None if active is None else len(active),
                     "roles": None if roles is None else "".join(r[0] for r in roles),
                     "prefill_flops": flops, "prefill_s": prefill, "decode_per_token_s": decode})
        log(f"  {label:<22} {kept:>6} visual tokens  prefill {prefill['median'] * 1e3:9.2f} ms  "
            f"decode {decode['median'] * 1e3:8.2f} ms/token  {flops / 1e9:10.3f} GFLOPs")
    base = rows[0]
    for row in rows:
        row["flop_ratio"] = row["prefill_flops"] / base["prefill_flops"]
        row["speedup"] = base["prefill_s"]["median"] / row["prefill_s"]["median"]
        row["theoretical_speedup"] = 1.0 / row["flop_ratio"]
        row["realised_share"] = row["speedup"] * row["flop_ratio"]
        row["decode_speedup"] = base["decode_per_token_s"]["median"] / row["decode_per_token_s"]["median"]
        row["achieved_tflops"] = row["prefill_flops"] / row["prefill_s"]["median"] / 1e12
    device_name = provenance.device_name(device)
    peak = peak if peak is not None else (peak_tflops(device_name) if device.startswith("cuda") else None)
    mfu = base["achieved_tflops"] / peak if peak else None
    return {
        "architecture": asdict(arch), "layers": L, "layers_full": arch.layers, "n_visual": n_visual,
        "n_text": n_text, "vocab": config.vocab_size, "dtype": dtype, "device": device, "device_name": device_name,
        "attn_implementation": config._attn_implementation, "threads": torch.get_num_threads(),
        "batch_size": batch_size, "warmup": warmup, "repeats": repeats, "max_new_tokens": max_new_tokens,
        "budget": budget,
        "peak_tflops": peak, "mfu_full_prefill": mfu, "rows": rows, "versions": provenance.package_versions(),
        "lock": provenance.lock_record(),
        "load_average": {"before": load_before, "after": _load()},
    }


def _load() -> float | None:
    """The machine's 1-minute load average (how shared the CPU was), None where unknown."""
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def markdown(result: dict) -> str:
    arch = result["architecture"]
    cap = "" if result["layers"] == result["layers_full"] else f" (of {result['layers_full']})"
    lines = [
        f"### {arch['name']}: {arch['note']}"
        + (f", batch {result['batch_size']}" if result["batch_size"] > 1 else ""),
        "",
        (f"{result['device_name']}, {result['dtype']}, attention `{result['attn_implementation']}`, "
         f"{result['threads']} thread(s); LLM: hidden {arch['hidden']}, MLP {arch['intermediate']}, "
         f"{result['layers']} layers{cap}, {arch['heads']} heads / {arch['kv_heads']} KV heads, vocab "
         f"{result['vocab']}; batch of {result['batch_size']} x prompt {result['n_text']} text + "
         f"{result['n_visual']} visual tokens; "
         f"median of {result['repeats']} (methods interleaved) after {result['warmup']} warm-up; "
         f"{result['max_new_tokens']} tokens generated; 1-min load average {result['load_average']['before']} "
         f"before, {result['load_average']['after']} after."),
        "",
        ("| method | visual tokens | SA layers | prefill GFLOPs | FLOP ratio | prefill ms (IQR) | speed-up | "
         "theoretical | realised share | decode ms/token (IQR) | TFLOP/s |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        p, d = r["prefill_s"], r["decode_per_token_s"]
        lines.append(
            f"| {r['method']} | {r['visual_tokens']} | {'-' if r['sa_layers'] is None else r['sa_layers']} | "
            f"{r['prefill_flops'] / 1e9:.3f} | {r['flop_ratio']:.3f} | "
            f"{p['median'] * 1e3:.2f} ({p['iqr'] * 1e3:.2f}) | "
            f"{r['speedup']:.2f}x | {r['theoretical_speedup']:.2f}x | {r['realised_share']:.2f} | "
            f"{d['median'] * 1e3:.2f} ({d['iqr'] * 1e3:.2f}) | {r['achieved_tflops']:.3f} |")
    if result["mfu_full_prefill"] is not None:
        lines += ["", (f"Prefill MFU of llava_full: {result['mfu_full_prefill']:.1%} of {result['peak_tflops']} "
                       "TFLOP/s (dense bf16 peak).")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=None, choices=sorted(ARCHITECTURES),
                        help="architectures (default: all on CUDA, the reference models on CPU)")
    parser.add_argument("--layers", type=int, help="cap the LLM's depth (VISOR's L/3 roles follow the capped depth)")
    parser.add_argument("--visual-tokens", type=int, help="override the visual-token count")
    parser.add_argument("--token-scale", type=float, help="scale the real visual-token count (e.g. 0.25 on CPU)")
    parser.add_argument("--text-tokens", type=int)
    parser.add_argument("--vocab", type=int, help="cap the vocabulary (LM head / embeddings memory on CPU)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--budget", type=float, default=0.2, help="token fraction of hired / random_drop / visor-tr")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per forward (1: latency; more: throughput)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak FLOP/s, if not in PEAK_TFLOPS")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="append the tables here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    names = args.arch or (sorted(ARCHITECTURES) if device.startswith("cuda") else ["reference_ov", "reference_next"])
    results = []
    for name in names:
        arch = ARCHITECTURES[name]
        n_visual = args.visual_tokens
        if n_visual is None and args.token_scale:
            n_visual = max(1, round(arch.n_visual * args.token_scale))
        print(f"{name}: building (layers {args.layers or arch.layers}, visual tokens {n_visual or arch.n_visual})",
              file=sys.stderr, flush=True)
        result = run_bench(arch, args.layers, n_visual, args.text_tokens, args.vocab, args.dtype, device,
                           args.warmup, args.repeats, args.max_new_tokens, args.threads, budget=args.budget,
                           peak=args.peak_tflops, batch_size=args.batch_size,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
        results.append(result)
        table = markdown(result)
        print(table, flush=True)
        if args.markdown:
            with open(args.markdown, "a") as handle:
                handle.write(table + "\n")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
