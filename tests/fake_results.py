"""Fake evaluation and latency records with the structure the workflow writes, turned into the real tables by
`visor_model.audit.tables` (so the columns are the real ones). Accuracy follows a simple model: fine-grained
benchmarks lose accuracy when visual tokens are dropped, VISOR keeps it with enough SA layers; per-document
outcomes share a latent difficulty, so runs on the same documents are positively correlated (as real ones are).
`with_half_budget` adds VISOR's runs at half its training budget (column `visor_training`) and
`training_table` the long-format VISOR training table (results/visor_training.csv) the quality gate reads.
Used by the report and claims tests and to render a full report for inspection:

    python tests/fake_results.py OUTDIR [paper]  # writes OUTDIR/{summary,samples,latency}.csv

`PAPER_BENCHMARKS` are the lmms-eval benchmarks of config/paper.yaml with their kinds and clusters (and full
FLOPs by kind), to render the report at the papers' scale (`tables(benchmarks=PAPER_BENCHMARKS)`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from visor_model.audit.tables import latency_table, sample_table, summary_table
from visor_model.stats import median_interval

BENCHMARKS = {"synth_background": ("coarse", "easy", 2.0e8), "synth_shape": ("medium", "easy", 2.1e8),
              "synth_marker": ("fine", "hard", 2.4e8)}
FULL_FLOPS = {"coarse": 2.0e9, "medium": 2.2e9, "fine": 2.4e9}  # a paper benchmark's full prefill, by kind
PAPER_BENCHMARKS = {
    name: (spec["kind"], spec.get("cluster"), FULL_FLOPS[spec["kind"]])
    for name, spec in yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "paper.yaml").read_text())[
        "benchmarks"].items() if spec["source"] == "lmms_eval"}
MODELS = {"reference_ov": "llava_onevision", "reference_next": "llava_next"}
VERSIONS = {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.23.0", "lmms_eval": "0.7.3",
            "snakemake": "9.27.1", "pandas": "3.1.1", "seaborn": "0.13.2", "papermill": "2.7.0"}
LOCK = {"file": "requirements.lock", "sha256": "e41e3425ebd2" + "0" * 52}
SA_MAX = 2
REPEATS = 10  # latency repeats (interleaved: a drift of the machine falls on every setting of the model alike)


def accuracy(kind: str, method: str, setting: dict, sa_layers: float | None = None) -> float:
    """Probability of a correct answer."""
    base = {"coarse": 0.97, "medium": 0.9, "fine": 0.85}[kind]
    if method in ("llava_full",):
        return base
    if method in ("random_drop", "hired"):
        budget = setting["budget"]
        keep = {"coarse": 1.0, "medium": 0.9, "fine": 0.35}[kind]
        quality = {"random_drop": 0.6, "hired": 1.0}[method] * (0.9 if setting.get("mode") == "reference_code" else 1.0)
        loss = (1 - budget) * (1 - keep) * (2 - quality)
        return max(0.05, base - 0.8 * loss * base)
    k = sa_layers if sa_layers is not None else setting.get("sa_layers", SA_MAX)
    acc = base - {"coarse": 0.01, "medium": 0.03, "fine": 0.18}[kind] * (SA_MAX - k) / SA_MAX
    if setting.get("token_budget"):
        acc -= {"coarse": 0.0, "medium": 0.01, "fine": 0.05}[kind] * (1 - setting["token_budget"])
    return acc


def flops(full: float, method: str, setting: dict, sa_layers: float | None = None) -> float:
    if method == "llava_full":
        return full
    if method in ("random_drop", "hired"):
        return full * (0.12 + 0.88 * setting["budget"])
    k = sa_layers if sa_layers is not None else setting.get("sa_layers", SA_MAX)
    value = full * (0.1 + 0.25 * k / SA_MAX)
    if setting.get("token_budget"):
        value *= 0.4 + 0.6 * setting["token_budget"]
    return value


def runs(with_visor=True, with_next=True, hired_on_ov=True):
    out = []
    models = [m for m in MODELS if with_next or m != "reference_next"]
    for model in models:
        out.append((model, "llava_full", {}))
        out += [(model, "random_drop", {"budget": b, "seed": 0}) for b in (0.1, 0.2, 0.4, 0.6, 1.0)]
    if with_next:
        out += [("reference_next", "hired", {"budget": b, "alpha": 0.5, "mode": mode, "score": "cls"})
                for b in (0.1, 0.2, 0.4, 0.6, 1.0) for mode in ("paper", "reference_code")]
    if hired_on_ov:
        out += [("reference_ov", "hired", {"budget": b, "alpha": 0.5, "mode": "paper", "score": "mean_received"})
                for b in (0.1, 0.2, 0.4, 0.6, 1.0)]
    if with_visor:
        out += [("reference_ov", "visor", {"sa_layers": k}) for k in range(SA_MAX + 1)]
        out += [("reference_ov", "visor", {"threshold": t}) for t in (0.5, 0.7, 0.9, 0.95, 0.99)]
        out += [("reference_ov", "visor", {"threshold": 0.9, "token_budget": b}) for b in (0.5, 0.25)]
    return out


def setting_id(setting: dict) -> str:
    return "_".join(f"{k}-{setting[k]}" for k in sorted(setting)) or "default"


def records(n: int = 60, seed: int = 0, benchmarks: dict = BENCHMARKS, **kwargs):
    rng = np.random.default_rng(seed)
    difficulty = {b: rng.random(n) for b in benchmarks}
    timing_rng = np.random.default_rng(seed + 1)
    drift = 1 + 0.05 * np.arange(REPEATS)
    evaluations, latencies = [], {}
    for model, method, setting in runs(**kwargs):
        for benchmark, (kind, cluster, full_flops) in benchmarks.items():
            samples = []
            for doc in range(n):
                sa = None
                if method == "visor" and "threshold" in setting:
                    hard_doc = difficulty[benchmark][doc] > (0.6 if kind == "fine" else 0.9)
                    sa = min(SA_MAX, int(hard_doc) + int(setting["threshold"] >= 0.9 and kind == "fine"))
                p = accuracy(kind, method, setting, sa)
                correct = float(difficulty[benchmark][doc] < p)
                f = flops(full_flops, method, setting, sa)
                tokens = 120 if method in ("llava_full", "visor") else int(120 * setting["budget"])
                samples.append({"doc_id": doc, "answer": "x", "target": "x", "score": correct,
                                "input_tokens": 140, "output_tokens": 1, "visual_tokens": 120,
                                "visual_tokens_kept": tokens,
                                "newline_tokens_kept": 0 if setting.get("mode") == "reference_code" else 10,
                                "llm_visual_tokens": tokens, "llm_text_tokens": 20,
                                "flops_vision": 5e7, "flops_projector": 1e6, "flops_selection": 0.0,
                                "flops_llm_prefill": f, "flops_llm_prefill_dense": 1.3 * f,
                                "flops_llm_decode": 1e6, "flops_lm_head": 1e5, "flops_total": f + 5.2e7,
                                "fastv_macs": 0.55 * f, "layers_sa": sa if sa is not None else setting.get("sa_layers"),
                                "sa_layers": sa if sa is not None else setting.get("sa_layers")})
            evaluations.append({
                "model": model, "method": method, "setting_id": setting_id(setting), "setting": setting,
                "benchmark": benchmark, "task": benchmark, "kind": kind, "cluster": cluster,
                "metrics": {"exact_match": float(np.mean([s["score"] for s in samples]))}, "n": n,
                "primary_metric": {"name": "exact_match", "value": 100 * float(np.mean([s["score"] for s in samples])),
                                   "scale": "0-100", "factor": 100, "mean": True},
                "samples": samples,
                "checkpoint": {"family": MODELS[model], "source": "shipped", "revision": None,
                               "weights_sha256": "ab" * 32},
                "provenance": {"device": "cpu (x86_64, 2 cores)", "versions": VERSIONS, "lock": LOCK}})
        prefill_flops = flops(2.2e8, method, setting) + 5.1e7
        prefill = 0.002 + prefill_flops / 2e10
        decode = 0.004 + (0.0002 if method == "llava_full" else 0.0001)
        per_repeat = {name: v * drift * (1 + 0.01 * timing_rng.standard_normal(REPEATS))
                      for name, v in (("prefill_s", prefill), ("decode_per_token_s", decode))}
        per_repeat["generate_s"] = per_repeat["prefill_s"] + 3 * per_repeat["decode_per_token_s"]
        timings = {}
        for name, values in per_repeat.items():
            median, low, high = median_interval(values)
            timings[name] = {"median": median, "ci_low": low, "ci_high": high, "per_repeat": list(values),
                             "q25": 0.95 * median, "q75": 1.05 * median, "iqr": 0.1 * median, "n": 8 * REPEATS}
        timings["preprocess_s"] = {"median": 0.003, "q25": 0.0028, "q75": 0.0032, "iqr": 0.0004, "n": 8}
        peaks = list(900 + prefill_flops / 1e6 + timing_rng.standard_normal(REPEATS))
        peak, peak_low, peak_high = median_interval(peaks)
        record = latencies.setdefault(model, {
            "model": model, "settings": [],
            "config": {"samples": 8, "repeats": REPEATS, "warmup": 2, "max_new_tokens": 4, "threads": 2,
                       "dtype": "float32"},
            "environment": {"device": "cpu (x86_64, 2 cores)", "versions": VERSIONS, "lock": LOCK,
                            "torch_threads": 2}})
        record["settings"].append({
            "name": f"{method}/{setting_id(setting)}", "label": method, "method": method,
            "setting_id": setting_id(setting), "setting": setting, "timings": timings,
            "memory": {"method": "rss", "weights_mb": 800.0, "peak_mb": peak, "ci_low": peak_low,
                       "ci_high": peak_high, "delta_mb": peak - 800.0, "per_repeat_peak_mb": peaks},
            "flops": {"mean": {"flops_llm_prefill": flops(2.2e8, method, setting), "flops_prefill": prefill_flops,
                               "flops_total": prefill_flops + 3e6}}})
    return evaluations, list(latencies.values())


def tables(n: int = 60, seed: int = 0, benchmarks: dict = BENCHMARKS, **kwargs):
    evaluations, latencies = records(n, seed, benchmarks, **kwargs)
    return summary_table(evaluations, seed=seed), sample_table(evaluations), latency_table(latencies)


def with_half_budget(summary: pd.DataFrame, samples: pd.DataFrame, loss: float = 0.0, seed: int = 1):
    """The tables with VISOR's runs twice: as they are (visor_training "full") and as if trained at half the
    budget ("half"), where a share `loss` of the correct answers on fine-grained benchmarks turn wrong (same
    documents); the other methods' rows get "" (not VISOR)."""
    rng = np.random.default_rng(seed)
    summary, samples = summary.copy(), samples.copy()
    summary["visor_training"] = np.where(summary["method"] == "visor", "full", "")
    samples["visor_training"] = np.where(samples["method"] == "visor", "full", "")
    half_summary = summary[summary["method"] == "visor"].assign(visor_training="half")
    half_samples = samples[samples["method"] == "visor"].assign(visor_training="half")
    fine = set(summary.loc[summary["kind"] == "fine", "benchmark"])
    flip = half_samples["benchmark"].isin(fine) & (half_samples["score"] == 1) & (rng.random(len(half_samples)) < loss)
    half_samples.loc[flip, "score"] = 0.0
    means = half_samples.groupby(["setting_id", "benchmark"])["score"].mean()
    half_summary["accuracy"] = [means[(s, b)] for s, b in zip(half_summary["setting_id"], half_summary["benchmark"])]
    return pd.concat([summary, half_summary], ignore_index=True), pd.concat([samples, half_samples], ignore_index=True)


def training_table(gaps: dict | None = None, model: str = "reference_ov", host: float = 0.9,
                   steps=(0, 400, 800)) -> pd.DataFrame:
    """results/visor_training.csv of VISOR trained on `model`: per training budget ("full", "half") in `gaps`,
    the largest configuration ends `gaps[budget]` points below the host on every validation benchmark (the
    host at stage 0 step 0); loss rows beside them."""
    rows = []
    for training, gap in (gaps or {"full": 1.0}).items():
        for benchmark in BENCHMARKS:
            rows.append({"model": model, "training": training, "order": "paper", "batch_size": 16, "stage": 0,
                         "step": 0, "metric": "val_accuracy", "configuration": "host", "benchmark": benchmark,
                         "value": host, "n": 100})
            for step in steps:
                for k in range(SA_MAX + 1):
                    progress = step / steps[-1]
                    value = host - gap / 100 - 0.1 * (SA_MAX - k) - 0.2 * (1 - progress)
                    rows.append({"model": model, "training": training, "order": "paper", "batch_size": 16,
                                 "stage": 1 + (step > steps[-1] / 2),
                                 "step": step, "metric": "val_accuracy", "configuration": f"sa{k}",
                                 "benchmark": benchmark, "value": value, "n": 100})
        for step in steps:
            rows.append({"model": model, "training": training, "order": "paper", "batch_size": 16,
                         "stage": 1 + (step > steps[-1] / 2), "step": step, "metric": "loss",
                         "configuration": f"sa{SA_MAX}", "benchmark": "", "value": 2.0 - step / steps[-1], "n": None})
    return pd.DataFrame(rows)


def write(folder: Path, **kwargs) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    summary, samples, latency = tables(**kwargs)
    paths = {"summary": folder / "summary.csv", "samples": folder / "samples.csv", "latency": folder / "latency.csv"}
    summary.to_csv(paths["summary"], index=False)
    samples.to_csv(paths["samples"], index=False)
    latency.to_csv(paths["latency"], index=False)
    return paths


if __name__ == "__main__":
    paper = sys.argv[2:] == ["paper"]
    print(write(Path(sys.argv[1]), **({"benchmarks": PAPER_BENCHMARKS} if paper else {})))
