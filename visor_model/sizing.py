"""Job sizing before spending GPU-days: jobs per rule and an estimate of GPU-hours per rule for a config.

    python -m visor_model.sizing --configfile config/paper.yaml [--benchmarks benchmarks/] [--tflops 200]

Counts come from the config as the workflow resolves it (visor_model.workflow_config.configured_runs), with each
`sa_layers: viable` grid counted at its largest: every configuration of VISOR's family (n SA candidates + 1). The
estimate is the FLOP model's (visor_model.efficiency.flops): per sample, the prefill of the vision tower, projector
and LLM on the benchmark's typical image (its entry's `image`: crops and visual tokens of IMAGES) at the
setting's token budget, plus its decode steps; divided by an assumed achieved throughput (--tflops), plus decode
steps bound by reading the weights (--bandwidth) and a fixed start-up per job (--startup-min; an evaluate job
evaluates every benchmark of a model x method x setting, or one with evaluation.group_benchmarks: false). VISOR's
reduced configurations are costed at full compute (an upper bound). Where a Snakemake `benchmarks/` folder holds
measured jobs of a rule, their mean wall time per job is printed beside it. No torch, no network.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import yaml

from visor_model import workflow_config
from visor_model.efficiency.flops import llm_flops, lm_head_flops, model_prefill_flops
from visor_model.efficiency.shapes import LlavaShape, LLMShape, ProjectorShape, VisionShape
from visor_model.methods import registry
from visor_model.methods.visor.config import default_layers

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"

# The two papers' checkpoints (their config.json): LLaVA-OneVision-0.5B (Qwen2-0.5B + SigLIP-so400m/14-384, all
# tokens of the last layer) and LLaVA-NeXT-7B (Vicuna-7B + CLIP-L/14-336, layer -2 without CLS).
SHAPES = {
    "llava_onevision": LlavaShape(
        llm=LLMShape(hidden=896, intermediate=4864, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64, vocab=151647),
        vision=VisionShape(hidden=1152, intermediate=4304, n_layers=26, n_heads=16, image_size=384, patch_size=14),
        projector=ProjectorShape(1152, 896), vision_feature_layer=-1, vision_feature_select_strategy="full"),
    "llava_next": LlavaShape(
        llm=LLMShape(hidden=4096, intermediate=11008, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128,
                     vocab=32064),
        vision=VisionShape(hidden=1024, intermediate=4096, n_layers=24, n_heads=16, image_size=336, patch_size=14,
                           has_cls=True),
        projector=ProjectorShape(1024, 4096), vision_feature_layer=-2, vision_feature_select_strategy="default"),
}
# (crops through the vision tower, visual tokens into the LLM) per family for a typical image of each class:
# photo ~640x480 (OV 2,929 and NeXT 2,340 tokens: transformers' processor, measured), large ~1024x1024 (OV 7,371),
# document ~1700x2200 (OV: a 5x6 grid, capped at 7,371 tokens by anyres_max_9; NeXT: its 2x2 grid at most),
# synthetic scenes (at most 144 px: one sub-image).
IMAGES = {
    "llava_onevision": {"photo": (5, 2929), "large": (10, 7371), "document": (31, 7371), "synthetic": (2, 1458)},
    "llava_next": {"photo": (5, 2340), "large": (5, 2928), "document": (5, 2928), "synthetic": (3, 1200)},
}
# The reference models (checkpoints/reference_*): 48-px crops, at most a 2x2 grid + the base image, 192 tokens.
REFERENCE_IMAGES = {"synthetic": (5, 192)}
REFERENCE_CHECKPOINTS = {"llava_onevision": "reference_ov", "llava_next": "reference_next"}
REPO = Path(__file__).resolve().parent.parent


def _namespace(value):
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    return value


def model_cost(spec: dict) -> tuple[LlavaShape, dict]:
    """(LlavaShape, images) of a configured model: a hub checkpoint is one of the papers' (SHAPES, IMAGES by
    family); a shipped or trained one is a reference model, read from its config.json."""
    family = spec["family"]
    if spec["checkpoint"]["source"] == "hub":
        return SHAPES[family], IMAGES[family]
    folder = Path(spec["checkpoint"].get("path") or REPO / "checkpoints" / REFERENCE_CHECKPOINTS[family])
    config = json.loads((folder / "config.json").read_text())
    config["vision_feature_select_strategy"] = config.get("vision_feature_select_strategy", "default")
    config["vision_feature_layer"] = config.get("vision_feature_layer", -2)
    return LlavaShape.from_config(_namespace(config)), REFERENCE_IMAGES


@dataclass(frozen=True)
class BenchmarkProfile:
    """A benchmark's size and typical sample: documents, image class, prompt and answer tokens."""

    samples: int
    image: str
    text_tokens: int = 64
    answer_tokens: int = 4


@dataclass(frozen=True)
class Assumptions:
    """What the estimate assumes of the machine (an H100/H200 running these models through HF transformers)."""

    tflops: float = 200.0  # achieved bf16 / fp16 TFLOP/s at prefill: ~20% of an H100's 989 dense
    fp32_tflops: float = 40.0  # achieved in float32 (no TF32; an H100's float32 peak is 67)
    bandwidth_gbs: float = 1500.0  # achieved HBM GB/s when decode reads the weights (H100: 3,350 peak)
    startup_min: float = 2.0  # per job: import lmms-eval and torch, load the checkpoint, index the tasks


def benchmark_profile(name: str, spec: dict, limit: int | None) -> BenchmarkProfile:
    """Benchmark `name`'s size and typical sample, from its config entry `spec`: a synthetic task's `test` split of
    small scenes; an lmms-eval task's (source lmms_eval: `documents`, rehearsal: `test`) with its `image` class
    and, where given, `text_tokens` and `answer_tokens`; at most `limit` (evaluation.limit) documents."""
    if spec["source"] == "synthetic":
        profile = BenchmarkProfile(spec["test"], "synthetic", text_tokens=16, answer_tokens=2)
    else:
        size = "documents" if spec["source"] == "lmms_eval" else "test"
        needed = {size: "the documents it evaluates", "image": "its typical image class, e.g. photo or document"}
        missing = [f"{key} ({what})" for key, what in needed.items() if key not in spec]
        if missing:
            raise ValueError(f"config error at benchmarks.{name}: the sizing tool needs {'; '.join(missing)}")
        profile = BenchmarkProfile(spec[size], spec["image"],
                                   **{key: spec[key] for key in ("text_tokens", "answer_tokens") if key in spec})
    return replace(profile, samples=min(profile.samples, limit or profile.samples))


def kept_fraction(method: str, setting: dict) -> float:
    """Share of visual tokens the LLM sees: the method's rule in `visor_model.methods.registry` (its record's
    `kept_fraction`); a method without a record is an error naming the registry, never charged at full compute."""
    return registry.method(method).kept_fraction(setting)


def sample_seconds(cost: tuple[LlavaShape, dict], profile: BenchmarkProfile, fraction: float, batch: int,
                   a: Assumptions, dtype: str = "bfloat16") -> float:
    """One sample's share of GPU time: prefill FLOPs / the throughput at `dtype` + its decode steps (weights read
    once per batched step; decode FLOPs are small next to that)."""
    shape, images = cost
    crops, visual = images[profile.image]
    n_visual = max(1, round(visual * fraction))
    prefill = model_prefill_flops(shape, n_text=profile.text_tokens, n_visual=n_visual, n_crops=crops).total
    context = profile.text_tokens + n_visual
    decode = sum(llm_flops(shape.llm, 1, context + t).total + lm_head_flops(shape.llm, 1).total
                 for t in range(profile.answer_tokens))
    weight_bytes = 2 * (shape.llm.n_layers * (2 * shape.llm.hidden * (shape.llm.q_dim + shape.llm.kv_dim)
                                              + 3 * shape.llm.hidden * shape.llm.intermediate)
                        + shape.llm.hidden * shape.llm.vocab)
    read = profile.answer_tokens * weight_bytes / (a.bandwidth_gbs * 1e9) / batch
    tflops = a.fp32_tflops if dtype == "float32" else a.tflops
    return (prefill + decode) / (tflops * 1e12) + read


def visor_family_size(shape: LlavaShape) -> int:
    """Configurations in VISOR's family on a host: n SA candidates + 1 (the most that can be viable)."""
    return len(default_layers(shape.llm.n_layers)[1]) + 1


def estimate(config: dict, a: Assumptions = Assumptions()) -> dict[str, dict]:
    """{rule: {"jobs": n, "gpu_hours": h}} for a checked config (defaults filled in); CPU rules at 0 GPU-hours."""
    costs = {model: model_cost(spec) for model, spec in config["models"].items()}
    configured, settings, viable_runs = workflow_config.configured_runs(config)
    runs = [(model, method, settings[(method, setting)]) for model, method, setting in configured]
    for model, method, template in viable_runs:
        runs += [(model, method, {**template, "sa_layers": k}) for k in range(visor_family_size(costs[model][0]))]
    evaluation, visor, latency = config["evaluation"], config["visor"], config["latency"]
    profiles = {b: benchmark_profile(b, spec, evaluation["limit"]) for b, spec in config["benchmarks"].items()}
    hours = {rule: 0.0 for rule in ("evaluate", "measure_latency", "train_visor", "label_policy", "train_policy")}
    startup = a.startup_min / 60
    evaluate_jobs = 1 if evaluation["group_benchmarks"] else len(profiles)  # per run
    for model, method, setting in runs:
        hours["evaluate"] += evaluate_jobs * startup
        for profile in profiles.values():
            seconds = sample_seconds(costs[model], profile, kept_fraction(method, setting), evaluation["batch_size"], a,
                                     evaluation["dtype"])
            hours["evaluate"] += profile.samples * seconds / 3600
        image = "synthetic" if latency["image_size"] is None or costs[model][1] is REFERENCE_IMAGES else "photo"
        timed = BenchmarkProfile(1, image, answer_tokens=latency["max_new_tokens"])
        per_run = latency["samples"] * (latency["warmup"] + latency["repeats"])
        hours["measure_latency"] += per_run * sample_seconds(
            costs[model], timed, kept_fraction(method, setting), 1, a, evaluation["dtype"]) / 3600
    latency_models = {model for model, _, _ in runs}  # one measure_latency job per model: every setting side by side
    hours["measure_latency"] += startup * len(latency_models)
    synthetic = BenchmarkProfile(1, "synthetic", text_tokens=16, answer_tokens=2)
    tasks = len(workflow_config.training_benchmarks(config))
    visor_models = visor["models"] if "visor" in config["methods"] else []
    for model in visor_models:
        cost = costs[model]
        image = "photo" if visor["train_data"] is not None and cost[1] is not REFERENCE_IMAGES else "synthetic"
        train_sample = sample_seconds(cost, BenchmarkProfile(1, image, answer_tokens=0), 1.0, 1, a, visor["dtype"])
        steps = visor["stage1_steps"] + visor["stage2_steps"]
        infer = sample_seconds(cost, synthetic, 1.0, visor["inference_batch_size"], a, visor["dtype"])
        viable = visor_family_size(cost[0])
        hours["train_visor"] += startup + (3 * steps * visor["batch_size"] * train_sample  # forward + backward
                                           + viable * tasks * visor["viable_per_task"] * infer) / 3600
        hours["label_policy"] += startup + viable * tasks * visor["label_per_task"] * infer / 3600
        hours["train_policy"] += startup + tasks * visor["label_per_task"] * train_sample / 3600
    sources = [workflow_config.checkpoint_source(config, model) for model in config["models"]]
    jobs = {"generate_benchmark": sum(spec["source"] == "synthetic" for spec in config["benchmarks"].values()),
            "train_reference": sources.count("train"), "provide_checkpoint": len(config["models"]),
            "evaluate": len(runs) * evaluate_jobs, "measure_latency": len(latency_models),
            "train_visor": len(visor_models), "label_policy": len(visor_models), "train_policy": len(visor_models),
            "aggregate": 1, "audit_claims": 1, "report_section": 7, "report": 1}
    return {rule: {"jobs": n, "gpu_hours": hours.get(rule, 0.0)} for rule, n in jobs.items()}


def measured_seconds(benchmarks_dir: Path) -> dict[str, tuple[int, float]]:
    """{rule: (jobs measured, mean wall seconds)} from Snakemake's benchmark files (benchmarks/<rule>/...tsv)."""
    measured = {}
    for rule_dir in sorted(p for p in Path(benchmarks_dir).iterdir() if p.is_dir()):
        seconds = []
        for tsv in rule_dir.rglob("*.tsv"):
            with open(tsv) as handle:
                seconds += [float(row["s"]) for row in csv.DictReader(handle, delimiter="\t")]
        if seconds:
            measured[rule_dir.name] = (len(seconds), sum(seconds) / len(seconds))
    return measured


def report(config: dict, a: Assumptions, benchmarks_dir: Path | None = None) -> str:
    """The table `main` prints: jobs, estimated GPU-hours and, where measured, mean seconds per job and jobs x
    that mean (hours) per rule."""
    rows = estimate(config, a)
    measured = measured_seconds(benchmarks_dir) if benchmarks_dir and Path(benchmarks_dir).is_dir() else {}
    lines = [f"{'rule':<20}{'jobs':>6}{'GPU-hours (FLOP model)':>24}{'measured s/job':>16}{'jobs x s/job (h)':>18}"]
    for rule, row in rows.items():
        seen = measured.get(rule)
        mean = f"{seen[1]:.0f} (n={seen[0]})" if seen else "-"
        hours = f"{row['jobs'] * seen[1] / 3600:.2f}" if seen else "-"
        lines.append(f"{rule:<20}{row['jobs']:>6}{row['gpu_hours']:>24.2f}{mean:>16}{hours:>18}")
    total = sum(row["gpu_hours"] for row in rows.values())
    lines.append(f"{'total':<20}{sum(row['jobs'] for row in rows.values()):>6}{total:>24.2f}")
    lines.append(f"assumed: {a.tflops:.0f} TFLOP/s achieved at prefill (bf16; float32: {a.fp32_tflops:.0f}), "
                 f"{a.bandwidth_gbs:.0f} GB/s when "
                 f"decoding, {a.startup_min:.1f} min start-up per job; viable VISOR configurations counted at "
                 "their most (the family) and costed at full compute")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", required=True, type=Path)
    parser.add_argument("--benchmarks", type=Path, default=Path("benchmarks"),
                        help="Snakemake benchmark folder with measured jobs (default: ./benchmarks)")
    parser.add_argument("--tflops", type=float, default=Assumptions.tflops, help="achieved bf16 TFLOP/s")
    parser.add_argument("--fp32-tflops", type=float, default=Assumptions.fp32_tflops)
    parser.add_argument("--bandwidth", type=float, default=Assumptions.bandwidth_gbs, help="GB/s")
    parser.add_argument("--startup-min", type=float, default=Assumptions.startup_min)
    args = parser.parse_args()
    config = yaml.safe_load(args.configfile.read_text())
    workflow_config.check(config, SCHEMA, overlay=config, replace_workflow_config=True)
    assumptions = Assumptions(args.tflops, args.fp32_tflops, args.bandwidth, args.startup_min)
    print(report(config, assumptions, args.benchmarks))


if __name__ == "__main__":
    main()
