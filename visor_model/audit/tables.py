"""Tidy result tables from the per-evaluation records: one summary row per model x method x setting x
benchmark, one row per sample (for paired comparisons), accuracy with a seeded bootstrap CI.

Scores: each sample's `score` in [0, 1] under its benchmark's primary metric (`lmms_plugins.metrics`; exact
match on the synthetic tasks, ANLS on DocVQA, relaxed accuracy on ChartQA, ...). `accuracy` is their mean over
the `n_scored` samples that have one (all but MME's other kind of question), with a percentile bootstrap CI
(accuracy_ci_low/high); the cluster averages and paired comparisons use it. `metric` names the primary metric,
`metric_value` is lmms-eval's own aggregate of it on the task's scale `metric_scale` (points 0-100, OCRBench
0-1000, MME perception 0-2000), with a CI (metric_ci_low/high) where the metric is the per-sample mean
(not for POPE's F1, MME's category sums or MMBench's circular evaluation).

Compute columns of the summary (from the per-sample FLOP records of `visor_model.efficiency.accounting`):
  mean_flops_<term>     mean over samples of each term: vision, projector, selection, llm_prefill (causal, the
                        headline), llm_prefill_{sa,text,ca,conv,router}, llm_prefill_dense, llm_decode,
                        lm_head, total; mean_fastv_macs (FastV's convention, MACs)
  llm_prefill_ratio     mean_flops_llm_prefill / that of `llava_full` for the same model and benchmark (NaN
                        without that baseline); llm_prefill_saving = its inverse
  mean_layers_{sa,ca,text}   LLM layers per role (mean_layers_sa = mean SA configuration size for VISOR)
  mean_llm_visual_tokens, mean_llm_text_tokens, mean_visual_token_layers_{sa,ca}  visual tokens entering the
                        LLM, and visual tokens x layers processed by SA layers / read by CA blocks
`latency_table` turns the `results/latency/...json` records of `visor_model.efficiency.latency` into one row each:
median and IQR of prefill_s (time to first token), decode_per_token_s, generate_s, preprocess_s; peak memory; the
mean FLOPs of the same inputs; prefill_speedup / decode_speedup against llava_full of the same model, the FLOP
ratios (llm_prefill, prefill = everything before the first token, total) and prefill_realised_share =
prefill_speedup x prefill_flop_ratio (1: time fell as much as FLOPs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from visor_model.audit.analysis import bootstrap_mean

SETTING_FIELDS = ("budget", "alpha", "mode", "score", "threshold", "sa_layers", "token_budget", "seed",
                  "dominant_ratio", "scale", "merge")


def sample_table(records: list[dict]) -> pd.DataFrame:
    rows = []
    for record in records:
        for sample in record["samples"]:
            rows.append({"model": record["model"], "method": record["method"], "setting_id": record["setting_id"],
                         "benchmark": record["benchmark"], **sample})
    return pd.DataFrame(rows)


def summary_table(records: list[dict], seed: int = 0) -> pd.DataFrame:
    rows = []
    for record in records:
        samples = pd.DataFrame(record["samples"])
        scores = samples["score"].to_numpy(dtype=float)
        scores = scores[np.isfinite(scores)]  # samples without a score under the primary metric (MME)
        _, low, high = bootstrap_mean({record["benchmark"]: scores}, seed=seed)  # percentile bootstrap CI
        metric = record["primary_metric"]
        factor = metric["factor"] if metric["mean"] else float("nan")  # a CI of the mean is one of the metric
        row = {
            "model": record["model"],
            "family": record["checkpoint"]["family"],
            "method": record["method"],
            "setting_id": record["setting_id"],
            **{field: record["setting"].get(field) for field in SETTING_FIELDS},
            "benchmark": record["benchmark"],
            "kind": record["kind"],
            "cluster": record["cluster"],
            "n": record["n"],
            "accuracy": float(scores.mean()) if len(scores) else float("nan"),
            "accuracy_ci_low": low,
            "accuracy_ci_high": high,
            "anls": record["metrics"].get("anls"),
            "metric": metric["name"],
            "metric_value": metric["value"],
            "metric_scale": metric["scale"],
            "metric_ci_low": factor * low,
            "metric_ci_high": factor * high,
            "n_scored": len(scores),
        }
        for column in ("visual_tokens", "visual_tokens_kept", "newline_tokens_kept", "input_tokens", "output_tokens"):
            if column in samples:
                row[f"mean_{column}"] = float(samples[column].mean())
        if "visual_tokens" in samples:
            row["kept_fraction"] = float(samples["visual_tokens_kept"].sum() / samples["visual_tokens"].sum())
        row.update(compute_means(samples))
        row.update({
            "checkpoint_source": record["checkpoint"]["source"],
            "checkpoint_revision": record["checkpoint"].get("revision"),
            "checkpoint_sha256": record["checkpoint"]["weights_sha256"],
            "device": record["provenance"]["device"],
            "lock_sha256": record["provenance"]["lock"]["sha256"],
            **{f"version_{k}": v for k, v in record["provenance"]["versions"].items()},
        })
        rows.append(row)
    return add_prefill_ratio(pd.DataFrame(rows))


FLOP_TERMS = ("vision", "projector", "selection", "llm_prefill", "llm_prefill_sa", "llm_prefill_text",
              "llm_prefill_ca", "llm_prefill_conv", "llm_prefill_router", "llm_prefill_dense", "llm_decode",
              "lm_head", "total")
BASELINE_METHOD = "llava_full"


def compute_means(samples: pd.DataFrame) -> dict:
    """Mean FLOPs per term and visual-token / layer-role counts of one evaluation's samples."""
    row = {}
    for term in FLOP_TERMS:
        if f"flops_{term}" in samples:
            row[f"mean_flops_{term}"] = float(samples[f"flops_{term}"].mean())
    for column in ("fastv_macs", "layers_sa", "layers_ca", "layers_text", "llm_visual_tokens", "llm_text_tokens"):
        if column in samples:
            row[f"mean_{column}"] = float(samples[column].mean())
    if "llm_visual_tokens" in samples:
        for role in ("sa", "ca"):
            if f"layers_{role}" in samples:
                row[f"mean_visual_token_layers_{role}"] = float(
                    (samples["llm_visual_tokens"] * samples[f"layers_{role}"]).mean())
    return row


def add_prefill_ratio(summary: pd.DataFrame) -> pd.DataFrame:
    """llm_prefill_ratio = mean_flops_llm_prefill / the llava_full row's, per (model, benchmark); NaN without one."""
    if summary.empty or "mean_flops_llm_prefill" not in summary:
        summary["llm_prefill_ratio"] = float("nan")
        summary["llm_prefill_saving"] = float("nan")
        return summary
    baseline = (summary[summary["method"] == BASELINE_METHOD]
                .groupby(["model", "benchmark"])["mean_flops_llm_prefill"].first())
    reference = [baseline.get((m, b), float("nan")) for m, b in zip(summary["model"], summary["benchmark"])]
    summary["llm_prefill_ratio"] = summary["mean_flops_llm_prefill"] / np.array(reference, dtype=float)
    summary["llm_prefill_saving"] = 1.0 / summary["llm_prefill_ratio"]
    return summary


def latency_table(records: list[dict]) -> pd.DataFrame:
    """One row per latency record (model x method x setting): medians, IQRs, peak memory, the FLOPs of the
    same inputs, and speed-ups against `llava_full` of the same model (NaN without it)."""
    rows = []
    for record in records:
        row = {"model": record["model"], "method": record["method"], "setting_id": record["setting_id"],
               **{field: record["setting"].get(field) for field in SETTING_FIELDS}}
        for name, stats in record["timings"].items():
            for key in ("median", "q25", "q75", "iqr", "n"):
                row[f"{name}_{key}"] = stats[key]
        memory = record["memory"]
        row.update({"peak_memory_mb": memory["peak_mb"], "peak_memory_delta_mb": memory.get("delta_mb"),
                    "memory_method": memory["method"],
                    "mean_flops_llm_prefill": record["flops"]["mean"]["flops_llm_prefill"],
                    "mean_flops_prefill": record["flops"]["mean"]["flops_prefill"],
                    "mean_flops_total": record["flops"]["mean"]["flops_total"],
                    "samples": record["config"]["samples"], "repeats": record["config"]["repeats"],
                    "warmup": record["config"]["warmup"], "max_new_tokens": record["config"]["max_new_tokens"],
                    "threads": record["config"].get("threads"), "device": record["environment"]["device"],
                    "lock_sha256": record["environment"]["lock"]["sha256"], "dtype": record["config"].get("dtype"),
                    **{f"version_{k}": v for k, v in record["environment"]["versions"].items()}})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    base = table[table["method"] == BASELINE_METHOD].groupby("model").first()
    for column, speed in (("prefill_s_median", "prefill_speedup"), ("decode_per_token_s_median", "decode_speedup")):
        reference = table["model"].map(base[column]) if column in base else np.nan
        table[speed] = reference / table[column]
    for column, ratio in (("mean_flops_llm_prefill", "llm_prefill_flop_ratio"),
                          ("mean_flops_prefill", "prefill_flop_ratio"), ("mean_flops_total", "total_flop_ratio")):
        table[ratio] = table[column] / table["model"].map(base[column])
    # realised share: the measured time-to-first-token speed-up over the one its FLOPs promise (vision tower,
    # projector, selection, LLM prefill and the first LM-head call: the work prefill_s times)
    table["prefill_realised_share"] = table["prefill_speedup"] * table["prefill_flop_ratio"]
    return table
