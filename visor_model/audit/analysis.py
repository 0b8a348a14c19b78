"""Computations behind the report: method series and colours, the Pareto frontier, VISOR's Table-1 layout,
paired bootstrap comparisons at matched FLOPs (a competitor's accuracy-FLOP curve interpolated, never
extrapolated). Pure pandas/numpy over the tidy tables of
`visor_model.audit.tables` (summary.csv, samples.csv, latency.csv); the notebooks only call these and plot.

A *series* is what the report draws as one curve with one colour: a method, split where one method has
variants that the papers report as different rows (HiRED as published vs the official code's behaviour; VISOR's
fixed configurations, its policy, and VISOR-TR) or that the audit adds (VisionZip's mean-merge ablation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from visor_model.methods import registry
from visor_model.stats import BOOTSTRAP_RESAMPLES, paired_bootstrap, pareto_mask
from visor_model.stats import is_missing as _missing

# --- series and colours -----------------------------------------------------------------------------------
# From the method registry (visor_model.methods.registry): every method's series with its label, colour and marker.

SERIES = tuple(s.id for s in registry.all_series())  # the report's order
SERIES_LABELS = {s.id: s.label for s in registry.all_series()}
PALETTE = {s.label: s.colour for s in registry.all_series()}  # one colour per series, everywhere in the report
MARKERS = {s.label: s.marker for s in registry.all_series()}
# the per-sample column behind a summary column: `score`, the sample's score under its benchmark's primary
# metric (visor_model.audit.tables), is what `accuracy` averages
METRIC_SAMPLE_COLUMN = {"accuracy": "score"}
KEY = ["model", "method", "setting_id", "benchmark"]


def series_key(row) -> str:
    """The series of one summary/latency row (a dict or a pandas row): its method's record decides
    (`Method.series_of`; NaN settings count as unset); a method without a record is its own series."""
    record = next((m for m in registry.METHODS if m.id == row["method"]), None)
    if record is None:
        return row["method"]
    return record.series_key({key: None if _missing(value) else value for key, value in row.items()})


def add_series(table: pd.DataFrame) -> pd.DataFrame:
    """The table with `series` (key) and `series_label` columns; absent setting columns count as unset."""
    table = table.copy()
    if table.empty:
        table["series"] = pd.Series(dtype=str)
        table["series_label"] = pd.Series(dtype=str)
        return table
    for column in registry.setting_columns():
        if column not in table:
            table[column] = np.nan
    table["series"] = [series_key(row) for row in table.to_dict("records")]
    table["series_label"] = table["series"].map(lambda s: SERIES_LABELS.get(s, s))
    return table


def series_order(table: pd.DataFrame) -> list[str]:
    """Series labels present in `table`, in the report's fixed order (unknown series last)."""
    present = list(dict.fromkeys(table["series_label"]))
    known = [SERIES_LABELS[s] for s in SERIES if SERIES_LABELS[s] in present]
    return known + [s for s in present if s not in known]


UNKNOWN_COLOUR = "#555555"  # a series without a PALETTE entry


def colour(label: str) -> str:
    return PALETTE.get(label, UNKNOWN_COLOUR)


def setting_label(row) -> str:
    """A short human label of a setting: 'budget 0.2', 'budget 0.05, newlines none', 'SA layers 2',
    'tau 0.9, tokens 0.5', 'K 2, R 0.5', 'scale 0.5', 'base crop only', 'full'."""
    if row.get("mode") == "base_only":  # downsample's setting without a number
        return "base crop only"
    parts = []
    for field, name in (("budget", "budget"), ("newlines", "newlines"), ("sa_layers", "SA layers"),
                        ("threshold", "tau"), ("token_budget", "tokens"), ("k", "K"), ("ratio", "R"),
                        ("scale", "scale"), ("mode", "mode"), ("alpha", "alpha"),
                        ("score", "score"), ("seed", "seed"), ("selection_layer", "selection layer"),
                        ("distribution_layer", "distribution layer"), ("head", "head")):
        value = row.get(field)
        if _missing(value) or field in ("mode", "score", "seed", "alpha"):
            continue
        if field in ("sa_layers", "k", "selection_layer", "distribution_layer", "head"):
            value = int(value)
        parts.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(parts) or "full"


# --- units ------------------------------------------------------------------------------------------------

def flop_unit(values) -> tuple[float, str]:
    """(divisor, unit) for FLOP counts: FLOPs, kFLOPs, MFLOPs, GFLOPs, TFLOPs by the largest value."""
    values = [v for v in np.asarray(values, dtype=float).ravel() if np.isfinite(v)]
    largest = max(values) if values else 1.0
    for divisor, unit in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if largest >= divisor:
            return divisor, unit
    return 1.0, "FLOPs"


# --- Pareto frontier -------------------------------------------------------------------------------------

def pareto_frontier(table: pd.DataFrame, cost: str = "mean_flops_llm_prefill", quality: str = "accuracy",
                    by=("model", "benchmark")) -> pd.DataFrame:
    """`table` with a boolean `pareto` column: on the frontier of its (model, benchmark) group."""
    table = table.copy()
    table["pareto"] = False
    if table.empty or cost not in table or quality not in table:
        return table
    for index in table.groupby(list(by), sort=False).groups.values():
        part = table.loc[index]
        table.loc[index, "pareto"] = pareto_mask(part[cost], part[quality])
    return table


# --- VISOR's Table 1 -------------------------------------------------------------------------------------

def cluster_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per model x series x setting, laid out like VISOR's Table 1: the mean over the easy and over
    the hard benchmarks of each one's primary score in points (`accuracy` x 100: ANLS on DocVQA/InfoVQA,
    relaxed accuracy on ChartQA, OCRBench's correct share, i.e. its 0-1000 score / 10), how many benchmarks
    each average covers, and the FLOP saving
    = 1 / (the mean over benchmarks of llm_prefill_ratio, LLM prefill FLOPs relative to the full model)."""
    columns = ["model", "series_label", "setting", "setting_id", "easy_avg", "hard_avg", "n_easy", "n_hard",
               "llm_prefill_ratio", "flops_saving"]
    if summary.empty or "cluster" not in summary:
        return pd.DataFrame(columns=columns)
    table = add_series(summary)
    rows = []
    for (model, setting_id, label), part in table.groupby(["model", "setting_id", "series_label"], sort=False):
        row = {"model": model, "series_label": label, "setting": setting_label(part.iloc[0]),
               "setting_id": setting_id}
        for cluster in ("easy", "hard"):
            scores = part.loc[part["cluster"] == cluster, "accuracy"]
            row[f"{cluster}_avg"] = 100 * scores.mean() if len(scores) else np.nan
            row[f"n_{cluster}"] = len(scores)
        ratio = part["llm_prefill_ratio"].mean() if "llm_prefill_ratio" in part else np.nan
        row["llm_prefill_ratio"] = ratio
        row["flops_saving"] = 1 / ratio if ratio and np.isfinite(ratio) else np.nan
        rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    order = {label: i for i, label in enumerate(SERIES_LABELS.values())}
    out["_order"] = out["series_label"].map(order).fillna(len(order))
    return out.sort_values(["model", "_order", "flops_saving"], na_position="last").drop(columns="_order") \
              .reset_index(drop=True)


def sample_scores(samples: pd.DataFrame, row, metric: str = "accuracy") -> pd.Series:
    """Per-document scores (indexed by doc_id) of one summary row's evaluation; documents without a score
    under the benchmark's primary metric (MME's other kind of question) are left out."""
    column = METRIC_SAMPLE_COLUMN.get(metric, metric)
    if samples.empty or column not in samples:
        return pd.Series(dtype=float)
    part = samples[(samples["model"] == row["model"]) & (samples["method"] == row["method"])
                   & (samples["setting_id"] == row["setting_id"]) & (samples["benchmark"] == row["benchmark"])]
    return part.set_index("doc_id")[column].astype(float).dropna().groupby(level=0).first()


def aligned_matrices(differences: dict) -> dict:
    """group -> (comparisons x documents) array of per-document differences (`differences`: group -> list of
    Series indexed by doc_id), aligned on the documents every comparison of the group shares."""
    matrices = {}
    for group, diffs in differences.items():
        shared = diffs[0].index
        for diff in diffs[1:]:
            shared = shared.intersection(diff.index)
        shared = shared.sort_values()
        if len(shared):
            matrices[group] = np.vstack([diff[shared].to_numpy() for diff in diffs])
    return matrices


def difference_matrices(samples: pd.DataFrame, pairs, metric: str = "accuracy") -> dict:
    """benchmark -> (pairs x documents) per-document differences a - b of (a_row, b_row) summary-row pairs,
    aligned on the documents every pair of that benchmark shares."""
    by_benchmark: dict[str, list] = {}
    for a, b in pairs:
        sa, sb = sample_scores(samples, a, metric), sample_scores(samples, b, metric)
        common = sa.index.intersection(sb.index)
        if len(common):
            by_benchmark.setdefault(a["benchmark"], []).append(sa[common] - sb[common])
    return aligned_matrices(by_benchmark)


def paired_difference(samples: pd.DataFrame, pairs, metric: str = "accuracy", seed: int = 0,
                      resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95) -> dict:
    """Mean difference a - b (points) over (a_row, b_row) pairs of summary rows, each pair on the documents
    both evaluated, with a paired bootstrap CI at `level` (documents resampled per benchmark). Returns mean,
    ci_low, ci_high (points), n_docs (document pairs, summed over pairs) and pairs (how many)."""
    differences = difference_matrices(samples, pairs, metric)
    mean, low, high = paired_bootstrap(differences, resamples=resamples, seed=seed, level=level)
    return {"mean": 100 * mean, "ci_low": 100 * low, "ci_high": 100 * high,
            "n_docs": int(sum(d.size for d in differences.values())),
            "pairs": sum(d.shape[0] for d in differences.values())}


def curve_partners(curve: pd.DataFrame, flops: float, column: str = "mean_flops_llm_prefill") -> list:
    """The points of a competitor's accuracy-FLOP curve (`curve`: its settings on one model and benchmark)
    that linear interpolation at `flops` uses, as [(row, weight), ...] with weights summing to 1: the two
    settings bracketing `flops` (settings of equal FLOPs share their end's weight), or the one setting at
    exactly `flops`. Empty when `flops` lies outside the curve's range: no extrapolation, so a method cheaper
    than the competitor's cheapest setting (or dearer than its dearest) has no partner, and the competitor is
    never given more compute than the interpolation between its own runs."""
    values = curve[column].astype(float) if column in curve else pd.Series(dtype=float)
    curve, values = curve[np.isfinite(values)], values[np.isfinite(values)]
    if curve.empty or not np.isfinite(flops):
        return []
    tolerance = 1e-9 * abs(flops)
    at = curve[(values - flops).abs() <= tolerance]
    if len(at):
        return [(row, 1 / len(at)) for _, row in at.iterrows()]
    below, above = values[values < flops], values[values > flops]
    if below.empty or above.empty:
        return []
    low = curve[(values - below.max()).abs() <= 1e-9 * below.max()]
    high = curve[(values - above.min()).abs() <= 1e-9 * above.min()]
    w = (flops - below.max()) / (above.min() - below.max())
    return ([(row, (1 - w) / len(low)) for _, row in low.iterrows()]
            + [(row, w / len(high)) for _, row in high.iterrows()])


def interpolated_difference(samples: pd.DataFrame, row, partners: list, metric: str = "accuracy") -> pd.Series:
    """Per-document difference (indexed by doc_id) of one summary row's scores minus the competitor curve
    interpolated at its FLOPs (`partners` from `curve_partners`): each document's interpolated score is the
    weighted sum of the bracketing settings' scores on it, with the weights of the FLOP interpolation. On the
    documents every run evaluated."""
    mine = sample_scores(samples, row, metric)
    theirs = [(sample_scores(samples, partner, metric), weight) for partner, weight in partners]
    common = mine.index
    for scores, _ in theirs:
        common = common.intersection(scores.index)
    common = common.sort_values()
    return mine[common] - sum(weight * scores[common] for scores, weight in theirs)


def curve_label(partners: list) -> str:
    """'0.81 x budget 0.1 + 0.19 x budget 0.2': the competitor's interpolated point in words."""
    return " + ".join(f"{weight:.2f} x {setting_label(row)}" for row, weight in partners) if len(partners) > 1 \
        else setting_label(partners[0][0])


def matched_comparisons(summary: pd.DataFrame, samples: pd.DataFrame, anchors=("visor_fixed", "visor_policy",
                        "visor_tr", "hired_paper"), competitors=("hired_paper", "hired_code", "visionzip",
                                                                 "prumerge_plus", "downsample", "fastv",
                                                                 "random_drop"),
                        metric: str = "accuracy", seed: int = 0,
                        resamples: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    """Every setting of an anchor series against each competitor's accuracy-FLOP curve interpolated at its
    LLM-prefill FLOPs (`curve_partners`), on the same model, benchmark and documents: the paired difference
    (points; per document, the anchor's score minus the interpolated competitor score) with a bootstrap CI.
    Never extrapolated: an anchor setting outside a competitor's FLOP range has no row for it.
    b_setting names the bracketing settings and their weights; b_accuracy is the interpolated accuracy."""
    columns = ["model", "benchmark", "cluster", "a", "a_setting", "b", "b_setting", "a_flops", "a_accuracy",
               "b_accuracy", "difference", "ci_low", "ci_high", "n_docs"]
    if summary.empty or "mean_flops_llm_prefill" not in summary:
        return pd.DataFrame(columns=columns)
    table = add_series(summary)
    rows = []
    for (model, benchmark), part in table.groupby(["model", "benchmark"], sort=False):
        for _, a in part[part["series"].isin(anchors)].iterrows():
            for competitor in competitors:
                if competitor == a["series"]:
                    continue
                partners = curve_partners(part[part["series"] == competitor], float(a["mean_flops_llm_prefill"]))
                diff = interpolated_difference(samples, a, partners, metric) if partners else pd.Series(dtype=float)
                if not len(diff):
                    continue
                mean, low, high = paired_bootstrap({benchmark: diff.to_numpy()[None, :]}, resamples, seed)
                rows.append({"model": model, "benchmark": benchmark, "cluster": a.get("cluster"),
                             "a": a["series_label"], "a_setting": setting_label(a),
                             "b": partners[0][0]["series_label"], "b_setting": curve_label(partners),
                             "a_flops": a["mean_flops_llm_prefill"], "a_accuracy": 100 * a["accuracy"],
                             "b_accuracy": 100 * sum(w * row["accuracy"] for row, w in partners),
                             "difference": 100 * mean, "ci_low": 100 * low, "ci_high": 100 * high,
                             "n_docs": len(diff)})
    return pd.DataFrame(rows, columns=columns)


def significance_words(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval could be computed"
    if low > 0:
        return "a significant advantage (the 95% CI excludes zero)"
    if high < 0:
        return "a significant deficit (the 95% CI excludes zero)"
    return "not a significant difference (the 95% CI includes zero)"


def describe_comparison(row) -> str:
    """One sentence for a row of `matched_comparisons`."""
    direction = "higher" if row["difference"] > 0 else "lower" if row["difference"] < 0 else "the same"
    amount = f"{abs(row['difference']):.1f} points {direction} than" if direction != "the same" else "the same as"
    return (f"On {row['benchmark']} ({row['model']}), {row['a']} [{row['a_setting']}] scores {amount} "
            f"{row['b']} interpolated at its LLM-prefill FLOPs [{row['b_setting']}] "
            f"(95% CI {row['ci_low']:+.1f} to {row['ci_high']:+.1f}, {int(row['n_docs'])} paired samples): "
            f"{significance_words(row['ci_low'], row['ci_high'])}.")


def summarise_comparisons(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Per model x benchmark x (a, b): how many matched settings, mean difference, how many significant."""
    if comparisons.empty:
        return pd.DataFrame(columns=["model", "benchmark", "a", "b", "settings", "mean_difference",
                                     "significantly_better", "significantly_worse"])
    grouped = comparisons.groupby(["model", "benchmark", "a", "b"], sort=False)
    return grouped.agg(settings=("difference", "size"), mean_difference=("difference", "mean"),
                       significantly_better=("ci_low", lambda s: int((s > 0).sum())),
                       significantly_worse=("ci_high", lambda s: int((s < 0).sum()))).reset_index()


# --- HiRED fidelity: the paper's algorithm against the official code's behaviour ------------------------

def hired_fidelity(summary: pd.DataFrame, samples: pd.DataFrame, metric: str = "accuracy", seed: int = 0,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    """Per model x benchmark x budget where both HiRED modes ran: accuracies, the paired difference
    official code - paper (points, CI), tokens kept by each (patch and newline tokens)."""
    columns = ["model", "benchmark", "budget", "paper_accuracy", "code_accuracy", "difference", "ci_low",
               "ci_high", "paper_tokens", "code_tokens", "paper_newline_tokens", "code_newline_tokens"]
    if summary.empty or "mode" not in summary:
        return pd.DataFrame(columns=columns)
    hired = summary[summary["method"] == "hired"]
    rows = []
    for (model, benchmark, budget), part in hired.groupby(["model", "benchmark", "budget"], sort=True):
        modes = {mode: group for mode, group in part.groupby("mode")}
        if not {"paper", "reference_code"} <= set(modes):
            continue
        for _, paper in modes["paper"].iterrows():
            for _, code in modes["reference_code"].iterrows():
                if any(not _same(paper.get(f), code.get(f)) for f in ("alpha", "score")):
                    continue
                result = paired_difference(samples, [(code, paper)], metric=metric, seed=seed, resamples=resamples)
                rows.append({"model": model, "benchmark": benchmark, "budget": budget,
                             "paper_accuracy": 100 * paper["accuracy"], "code_accuracy": 100 * code["accuracy"],
                             "difference": result["mean"], "ci_low": result["ci_low"],
                             "ci_high": result["ci_high"],
                             "paper_tokens": paper.get("mean_visual_tokens_kept"),
                             "code_tokens": code.get("mean_visual_tokens_kept"),
                             "paper_newline_tokens": paper.get("mean_newline_tokens_kept"),
                             "code_newline_tokens": code.get("mean_newline_tokens_kept")})
    return pd.DataFrame(rows, columns=columns)


def _same(a, b) -> bool:
    return (_missing(a) and _missing(b)) or a == b


# --- VISOR's policy ---------------------------------------------------------------------------------------

def policy_configurations(samples: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per-sample SA-layer counts chosen by VISOR's policy: model, benchmark, threshold, token_budget,
    sa_layers, count, share (of that evaluation's samples)."""
    columns = ["model", "benchmark", "setting_id", "threshold", "token_budget", "sa_layers", "count", "share"]
    if samples.empty or "sa_layers" not in samples or summary.empty or "threshold" not in summary:
        return pd.DataFrame(columns=columns)
    policy = summary[(summary["method"] == "visor") & summary["threshold"].notna()]
    if policy.empty:
        return pd.DataFrame(columns=columns)
    settings = policy[["model", "setting_id", "threshold"] + (["token_budget"] if "token_budget" in policy else [])] \
        .drop_duplicates(["model", "setting_id"])
    chosen = samples[samples["method"] == "visor"].merge(settings, on=["model", "setting_id"])
    chosen = chosen[chosen["sa_layers"].notna()]
    if chosen.empty:
        return pd.DataFrame(columns=columns)
    if "token_budget" not in chosen:
        chosen["token_budget"] = np.nan
    counts = chosen.groupby(["model", "benchmark", "setting_id", "threshold", "token_budget", "sa_layers"],
                            dropna=False).size().rename("count").reset_index()
    counts["share"] = counts["count"] / counts.groupby(["model", "benchmark", "setting_id"])["count"].transform("sum")
    counts["sa_layers"] = counts["sa_layers"].astype(int)
    return counts[columns]


def describe_comparison_group(row) -> str:
    """One sentence for a row of `summarise_comparisons`."""
    n, better, worse = int(row["settings"]), int(row["significantly_better"]), int(row["significantly_worse"])
    verdict = (f"significantly better in {better} of {n} matched settings" if better else
               f"not significantly better in any of {n} matched settings")
    verdict += f" and significantly worse in {worse}" if worse else ""
    return (f"On {row['benchmark']} ({row['model']}), {row['a']} against {row['b']} at the same LLM-prefill FLOPs "
            f"(its curve interpolated): mean difference {row['mean_difference']:+.1f} points, {verdict}.")
