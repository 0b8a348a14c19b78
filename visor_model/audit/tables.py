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
                        headline), llm_prefill_{sa,text,ca,conv,router,rank}, llm_prefill_dense, llm_decode,
                        lm_head, total; mean_fastv_macs (FastV's convention, MACs)
  llm_prefill_ratio     mean_flops_llm_prefill / that of `llava_full` for the same model and benchmark (NaN
                        without that baseline); llm_prefill_saving = its inverse
  mean_layers_{sa,ca,text}   LLM layers per role (mean_layers_sa = mean SA configuration size for VISOR)
  mean_llm_visual_tokens, mean_llm_text_tokens, mean_visual_token_layers_{sa,ca}  visual tokens entering the
                        LLM, and visual tokens x layers processed by SA layers / read by CA blocks

`latency_table` turns the `results/latency/{model}.json` records of `visor_model.efficiency.latency` (every setting
of a model timed side by side, interleaved over repeats) into one row per model x method x setting:
  <timing>_median, _ci_low, _ci_high   the median over repeats of the per-repeat values (each the median over the
                        samples, or over all decode steps) with its distribution-free 95% CI
                        (`analysis.median_interval`), for prefill_s (time to first token), decode_per_token_s,
                        generate_s; <timing>_q25, _q75, _iqr, _n: the spread over all sample x repeat measurements;
                        preprocess_s_* (host preprocessing, once per sample) without a CI
  peak_memory_mb (+ _ci_low/_ci_high)   the setting's weights + the peak its generations add, median over repeats;
                        peak_memory_delta_mb, weights_mb, memory_method
  prefill_speedup, decode_speedup, generate_speedup (+ _ci_low/_ci_high)   against llava_full of the same model and
                        run: the median and CI of the paired per-repeat ratios full / setting (repeat r of both ran
                        interleaved over the same stretch of time; NaN without llava_full)
  decode_share_of_prefill_gain (+ CI)   per repeat (decode speed-up - 1) / (prefill speed-up - 1), the share of the
                        prefill gain that per-token decoding also gets
  memory_saving_mb (+ CI)   per repeat llava_full's peak minus the setting's
  mean FLOPs of the same inputs and their ratios to llava_full (llm_prefill, prefill = everything before the
                        first token, total); prefill_realised_share (+ CI) = prefill_speedup x prefill_flop_ratio (1:
                        time fell as much as FLOPs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from visor_model.audit.analysis import bootstrap_mean, median_interval

SETTING_FIELDS = ("budget", "alpha", "mode", "score", "newlines", "threshold", "sa_layers", "token_budget",
                  "seed", "k", "ratio", "dominant_ratio", "scale", "merge", "selection_layer", "distribution_layer",
                  "head")


def visor_training(record: dict) -> str | None:
    """The training budget of a VISOR evaluation (its setting's `training`, default "full"); None for other methods."""
    return record["setting"].get("training", "full") if record["method"] == "visor" else None


def sample_table(records: list[dict]) -> pd.DataFrame:
    rows = []
    for record in records:
        for sample in record["samples"]:
            rows.append({"model": record["model"], "method": record["method"], "setting_id": record["setting_id"],
                         "visor_training": visor_training(record), "benchmark": record["benchmark"], **sample})
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
            "visor_training": visor_training(record),
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
              "llm_prefill_ca", "llm_prefill_conv", "llm_prefill_router", "llm_prefill_rank", "llm_prefill_dense",
              "llm_decode", "lm_head", "total")
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


TIMINGS = ("prefill_s", "decode_per_token_s", "generate_s")
SPEEDUPS = {"prefill_s": "prefill_speedup", "decode_per_token_s": "decode_speedup", "generate_s": "generate_speedup"}
PAIRED = (*SPEEDUPS.values(), "decode_share_of_prefill_gain", "memory_saving_mb")


def paired_columns(entry: dict, base: dict | None) -> dict:
    """The columns of `entry` (a setting of a latency record) paired with `base` (llava_full's in the same run):
    per repeat the speed-ups base / entry, the decode share of the prefill gain and the memory saving; each as the
    median over repeats and its 95% CI. All NaN without a base."""
    nan = float("nan")
    if base is None:
        return {f"{name}{end}": nan for name in PAIRED for end in ("", "_ci_low", "_ci_high")}
    if len(base["timings"]["prefill_s"]["per_repeat"]) != len(entry["timings"]["prefill_s"]["per_repeat"]):
        raise ValueError(f"{entry['name']} and {base['name']} have different repeat counts: not one run")
    per_repeat = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for timing, name in SPEEDUPS.items():
            per_repeat[name] = (np.asarray(base["timings"][timing]["per_repeat"], dtype=float)
                                / np.asarray(entry["timings"][timing]["per_repeat"], dtype=float))
        per_repeat["decode_share_of_prefill_gain"] = ((per_repeat["decode_speedup"] - 1)
                                                      / (per_repeat["prefill_speedup"] - 1))
    per_repeat["memory_saving_mb"] = (np.asarray(base["memory"]["per_repeat_peak_mb"], dtype=float)
                                      - np.asarray(entry["memory"]["per_repeat_peak_mb"], dtype=float))
    columns = {}
    for name in PAIRED:
        columns[name], columns[f"{name}_ci_low"], columns[f"{name}_ci_high"] = median_interval(per_repeat[name])
    return columns


def latency_table(records: list[dict]) -> pd.DataFrame:
    """One row per setting of the latency records (one record per model): medians and CIs over the repeats,
    spreads, peak memory, the FLOPs of the same inputs, and paired speed-ups against `llava_full` of the same
    run (NaN without it)."""
    rows, models = [], set()
    for record in records:
        if record["model"] in models:
            raise ValueError(f"two latency records of model {record['model']}: its settings must be one run")
        models.add(record["model"])
        baselines = [entry for entry in record["settings"] if entry["method"] == BASELINE_METHOD]
        if len(baselines) > 1:
            raise ValueError(f"the latency record of {record['model']} has {len(baselines)} {BASELINE_METHOD} settings")
        base = baselines[0] if baselines else None
        config, environment = record["config"], record["environment"]
        for entry in record["settings"]:
            row = {"model": record["model"], "method": entry["method"], "setting_id": entry["setting_id"],
                   **{field: entry["setting"].get(field) for field in SETTING_FIELDS}, "label": entry.get("label")}
            for name, stats in entry["timings"].items():
                for key in ("median", "ci_low", "ci_high", "q25", "q75", "iqr", "n"):
                    if key in stats:
                        row[f"{name}_{key}"] = stats[key]
            memory = entry["memory"]
            row.update({"peak_memory_mb": memory["peak_mb"], "peak_memory_mb_ci_low": memory["ci_low"],
                        "peak_memory_mb_ci_high": memory["ci_high"], "peak_memory_delta_mb": memory["delta_mb"],
                        "weights_mb": memory["weights_mb"], "memory_method": memory["method"]})
            row.update(paired_columns(entry, base))
            row.update({"mean_flops_llm_prefill": entry["flops"]["mean"]["flops_llm_prefill"],
                        "mean_flops_prefill": entry["flops"]["mean"]["flops_prefill"],
                        "mean_flops_total": entry["flops"]["mean"]["flops_total"],
                        "samples": config["samples"], "repeats": config["repeats"], "warmup": config["warmup"],
                        "max_new_tokens": config["max_new_tokens"], "threads": environment.get("torch_threads"),
                        "device": environment["device"], "lock_sha256": environment["lock"]["sha256"],
                        "dtype": config.get("dtype"),
                        **{f"version_{k}": v for k, v in environment["versions"].items()}})
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    base = table[table["method"] == BASELINE_METHOD].groupby("model").first()
    for column, ratio in (("mean_flops_llm_prefill", "llm_prefill_flop_ratio"),
                          ("mean_flops_prefill", "prefill_flop_ratio"), ("mean_flops_total", "total_flop_ratio")):
        table[ratio] = table[column] / table["model"].map(base[column])
    # realised share: the measured time-to-first-token speed-up over the one its FLOPs promise (vision tower,
    # projector, selection, LLM prefill and the first LM-head call: the work prefill_s times)
    for end in ("", "_ci_low", "_ci_high"):
        table[f"prefill_realised_share{end}"] = table[f"prefill_speedup{end}"] * table["prefill_flop_ratio"]
    return table


TRAINING_COLUMNS = ("model", "training", "order", "batch_size", "stage", "step", "metric", "configuration",
                    "benchmark", "value", "n")


def visor_training_table(trainings: list[tuple[str, str, dict]]) -> pd.DataFrame:
    """VISOR's training curves, long format, from (model, budget, training record of the checkpoint's
    visor_config.json) triples: the loss of every step (metric "loss"); every family member's validation accuracy
    per benchmark every eval_every steps ("val_accuracy", configuration "sa<K>"), with the host's on the same rows
    at step 0 (configuration "host"); and the final accuracy on the viable-search rows ("final_val_accuracy",
    with the host's too)."""
    rows = []
    for model, budget, record in trainings:
        history, host = record["history"], record["host_validation"]
        base = {"model": model, "training": budget, "order": record["universal"]["order"],
                "batch_size": record["universal"]["batch_size"]}
        rows += [{**base, "stage": stage, "step": step, "metric": "loss", "configuration": "", "benchmark": "",
                  "value": loss, "n": None} for step, stage, loss in history["loss"]]
        counts = {}
        for point in history["validation"]:
            counts[point["benchmark"]] = point["n"]
            rows.append({**base, "stage": point["stage"], "step": point["step"], "metric": "val_accuracy",
                         "configuration": point["configuration"], "benchmark": point["benchmark"],
                         "value": point["accuracy"], "n": point["n"]})
        rows += [{**base, "stage": 0, "step": 0, "metric": "val_accuracy", "configuration": "host", "benchmark": task,
                  "value": accuracy, "n": counts.get(task)} for task, accuracy in host["curve"].items()]
        last = history["loss"][-1][0] if history["loss"] else 0
        per_task = record["viable_split"]["rows_per_task"][1] - record["viable_split"]["rows_per_task"][0]
        for point in record["configurations"]:
            rows += [{**base, "stage": 2, "step": last, "metric": "final_val_accuracy",
                      "configuration": f"sa{point['sa_layers']}", "benchmark": task, "value": accuracy, "n": per_task}
                     for task, accuracy in point["task_accuracy"].items()]
        rows += [{**base, "stage": 0, "step": 0, "metric": "final_val_accuracy", "configuration": "host",
                  "benchmark": task, "value": accuracy, "n": per_task} for task, accuracy in host["viable"].items()]
    return pd.DataFrame(rows, columns=list(TRAINING_COLUMNS))
