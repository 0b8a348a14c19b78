"""The report's figures (matplotlib), one function per figure, each returning the Figure or None when the
tables lack what it needs. Colours and markers come from `visor_model.audit.analysis.PALETTE` / `MARKERS`, so a
series has one colour everywhere in the report."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd

from visor_model.audit import analysis
from visor_model.audit.analysis import MARKERS, add_series, colour, flop_unit, series_order

PANEL = (4.6, 3.4)
# Small multiples: at most this many panels per row, each CELL inches, so that a grid of any number of
# benchmarks x models stays 12 inches (about 1,100 px at the report's 90 dpi) wide and grows downwards.
COLUMNS = 4
CELL = (3.0, 2.5)


def _plain_log_ticks(ax):
    """Log-scale x axis with plain numbers (20, 50, 100) instead of powers of ten."""
    ax.set_xscale("log")
    formatter = mticker.FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_formatter(mticker.FuncFormatter(
        lambda value, _: f"{value:g}" if f"{value:g}"[0] in "25" else ""))


def _panels(n: int, width: float = PANEL[0], height: float = PANEL[1]):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def _grid(n: int, columns: int = COLUMNS, width: float = CELL[0], height: float = CELL[1]):
    """A figure of `n` panels, `columns` per row (fewer when n is smaller), the unused cells hidden."""
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n], columns


def _outer_labels(axes, columns: int, xlabel: str, ylabel: str) -> None:
    """Axis labels on the grid's left column and bottom panels only (the panels share their meaning)."""
    for i, ax in enumerate(axes):
        if i % columns == 0:
            ax.set_ylabel(ylabel)
        if i + columns >= len(axes):
            ax.set_xlabel(xlabel)


def series_points(rows: pd.DataFrame, sort_by: str):
    """(label, that series' rows sorted by `sort_by`) for every series of `rows`, in the report's order."""
    for label in series_order(rows):
        yield label, rows[rows["series_label"] == label].sort_values(sort_by)


def _legend(fig, axes, top: bool = False):
    """One legend for the whole figure (every label once), below the panels or, for a grid, above them."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="lower center" if top else "upper center",
                   bbox_to_anchor=(0.5, 1.0 if top else 0.0), ncol=min(4, len(handles)), frameon=False, fontsize=8)


def accuracy_vs_flops(summary: pd.DataFrame):
    """Accuracy (%) against mean LLM-prefill FLOPs per sample, one panel per benchmark and model (small
    multiples, benchmarks in the table's order, a model's panels side by side): every series' curve (error bars:
    95% CI), the Pareto frontier as a dashed step line, frontier points ringed; one legend above the grid."""
    part = (summary[np.isfinite(summary["mean_flops_llm_prefill"].astype(float))]
            if "mean_flops_llm_prefill" in summary else summary[:0])
    if part.empty:
        return None
    part = analysis.pareto_frontier(add_series(part))
    divisor, unit = flop_unit(part["mean_flops_llm_prefill"])
    models = list(dict.fromkeys(part["model"]))
    panels = [(benchmark, model) for benchmark in dict.fromkeys(part["benchmark"]) for model in models
              if ((part["benchmark"] == benchmark) & (part["model"] == model)).any()]
    fig, axes, columns = _grid(len(panels))
    for ax, (benchmark, model) in zip(axes, panels):
        rows = part[(part["benchmark"] == benchmark) & (part["model"] == model)]
        for label, points in series_points(rows, "mean_flops_llm_prefill"):
            x = points["mean_flops_llm_prefill"] / divisor
            y = 100 * points["accuracy"]
            err = [100 * (points["accuracy"] - points["accuracy_ci_low"]),
                   100 * (points["accuracy_ci_high"] - points["accuracy"])]
            ax.errorbar(x, y, yerr=err, color=colour(label), marker=MARKERS.get(label, "o"), markersize=4,
                        linewidth=1.2, capsize=2, label=label, alpha=0.9)
        frontier = rows[rows["pareto"]].sort_values("mean_flops_llm_prefill")
        ax.step(frontier["mean_flops_llm_prefill"] / divisor, 100 * frontier["accuracy"], where="post",
                color="black", linestyle="--", linewidth=1, label="Pareto frontier")
        ax.scatter(frontier["mean_flops_llm_prefill"] / divisor, 100 * frontier["accuracy"], s=90,
                   facecolors="none", edgecolors="black", linewidths=1)
        _plain_log_ticks(ax)
        ax.set_ylim(-2, 102)
        ax.set_title(f"{benchmark}\n{model}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    _outer_labels(axes, columns, f"LLM-prefill FLOPs ({unit}, log)", "accuracy (%)")
    fig.tight_layout()
    _legend(fig, axes, top=True)
    return fig


def hard_frontier(summary: pd.DataFrame):
    """The report's headline: mean accuracy (%) over the hard-cluster benchmarks against their mean LLM-prefill
    FLOPs per sample, one panel per model, every series' settings as a curve and the Pareto frontier across all
    of them as a dashed step line, frontier points ringed; one legend beside the panels. A run counts only where
    it was evaluated on every hard benchmark of its model (an average over fewer would not compare)."""
    needed = {"cluster", "mean_flops_llm_prefill", "accuracy"}
    if summary.empty or not needed <= set(summary):
        return None
    hard = add_series(summary[(summary["cluster"] == "hard")
                              & np.isfinite(summary["mean_flops_llm_prefill"].astype(float))])
    if hard.empty:
        return None
    runs = (hard.groupby(["model", "series_label", "setting_id"], sort=False)
            .agg(accuracy=("accuracy", "mean"), flops=("mean_flops_llm_prefill", "mean"), n=("benchmark", "nunique"))
            .reset_index())
    runs = runs[runs["n"] == runs.groupby("model")["n"].transform("max")]
    runs["pareto"] = False
    for index in runs.groupby("model", sort=False).groups.values():
        runs.loc[index, "pareto"] = analysis.pareto_mask(runs.loc[index, "flops"], runs.loc[index, "accuracy"])
    divisor, unit = flop_unit(runs["flops"])
    models = list(dict.fromkeys(runs["model"]))
    fig, axes = _panels(len(models), 4.0, 3.0)
    for ax, model in zip(axes, models):
        rows = runs[runs["model"] == model]
        for label, points in series_points(rows, "flops"):
            ax.plot(points["flops"] / divisor, 100 * points["accuracy"], color=colour(label),
                    marker=MARKERS.get(label, "o"), markersize=5, linewidth=1.2, label=label, alpha=0.9)
        frontier = rows[rows["pareto"]].sort_values("flops")
        ax.step(frontier["flops"] / divisor, 100 * frontier["accuracy"], where="post", color="black",
                linestyle="--", linewidth=1, label="Pareto frontier")
        ax.scatter(frontier["flops"] / divisor, 100 * frontier["accuracy"], s=90, facecolors="none",
                   edgecolors="black", linewidths=1)
        _plain_log_ticks(ax)
        ax.set_ylim(-2, 102)
        count = int(rows["n"].iloc[0])
        ax.set_title(f"{model}: {count} hard benchmark{'' if count == 1 else 's'}", fontsize=9)
        ax.set_xlabel(f"LLM-prefill FLOPs per sample ({unit}, log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("hard-cluster accuracy (%)")
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = series_order(runs) + ["Pareto frontier"]  # the report's order, whichever panel drew a series first
    fig.tight_layout()
    fig.legend([handles[label] for label in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False, fontsize=8)
    return fig


def cluster_plot(table: pd.DataFrame):
    """Easy and hard cluster averages (%) against the FLOP saving, one panel per model (from cluster_table)."""
    table = table[np.isfinite(table["flops_saving"].astype(float))] if not table.empty else table
    if table.empty:
        return None
    models = list(dict.fromkeys(table["model"]))
    fig, axes = _panels(len(models))
    for ax, model in zip(axes, models):
        rows = table[table["model"] == model]
        for label, points in series_points(rows, "flops_saving"):
            for cluster, style in (("easy", ":"), ("hard", "-")):
                if points[f"{cluster}_avg"].notna().any():
                    ax.plot(points["flops_saving"], points[f"{cluster}_avg"], linestyle=style, color=colour(label),
                            marker=MARKERS.get(label, "o"), label=f"{label}" if cluster == "hard" else None)
        _plain_log_ticks(ax)
        ax.set_xlabel("LLM-prefill FLOP saving against the full model (x, log scale)")
        ax.set_ylabel("cluster average accuracy (%)")
        ax.set_title(f"{model}: hard (solid) and easy (dotted)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, axes)
    fig.tight_layout()
    return fig


def latency_vs_flops(latency: pd.DataFrame):
    """Median time to first token (ms) against mean prefill FLOPs (vision tower, projector, selection, LLM
    prefill, first LM-head call) and median per-token decode time against the same, per model; error bars:
    interquartile range."""
    needed = {"prefill_s_median", "mean_flops_prefill"}
    if latency.empty or not needed <= set(latency):
        return None
    table = add_series(latency)
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(2, len(models), figsize=(PANEL[0] * len(models), 2 * PANEL[1]), squeeze=False)
    divisor, unit = flop_unit(table["mean_flops_prefill"])
    for column, model in enumerate(models):
        rows = table[table["model"] == model]
        for row_index, timing, name in ((0, "prefill_s", "time to first token (ms)"),
                                        (1, "decode_per_token_s", "decode time per token (ms)")):
            ax = axes[row_index][column]
            if f"{timing}_median" not in rows:
                ax.set_visible(False)
                continue
            for label, points in series_points(rows, "mean_flops_prefill"):
                y = 1000 * points[f"{timing}_median"]
                err = [1000 * (points[f"{timing}_median"] - points[f"{timing}_q25"]),
                       1000 * (points[f"{timing}_q75"] - points[f"{timing}_median"])]
                ax.errorbar(points["mean_flops_prefill"] / divisor, y, yerr=err, color=colour(label),
                            marker=MARKERS.get(label, "o"), linestyle="none", capsize=2, label=label)
            ax.set_xlabel(f"prefill FLOPs per sample, vision included ({unit})")
            ax.set_ylabel(name)
            device = rows["device"].iloc[0] if "device" in rows else ""
            ax.set_title(f"{model} ({device})", fontsize=9)
            ax.grid(True, alpha=0.3)
    _legend(fig, [ax for row in axes for ax in row])
    fig.tight_layout()
    return fig


def policy_histogram(configurations: pd.DataFrame):
    """Share of samples per SA-layer count chosen by VISOR's policy, one panel per benchmark, one group of
    bars per threshold (VISOR-TR settings excluded)."""
    table = configurations[configurations["token_budget"].isna()] if not configurations.empty else configurations
    if table.empty:
        return None
    benchmarks = list(dict.fromkeys(table["benchmark"]))
    thresholds = sorted(table["threshold"].unique())
    layers = sorted(table["sa_layers"].unique())
    fig, axes, columns = _grid(len(benchmarks))
    blues = plt.cm.Blues(np.linspace(0.35, 0.95, len(thresholds)))
    width = 0.8 / len(thresholds)
    for ax, benchmark in zip(axes, benchmarks):
        rows = table[table["benchmark"] == benchmark]
        for i, threshold in enumerate(thresholds):
            shares = (rows[rows["threshold"] == threshold].groupby("sa_layers")["share"].sum()
                      .reindex(layers, fill_value=0))
            ax.bar(np.arange(len(layers)) + (i - (len(thresholds) - 1) / 2) * width, 100 * shares.to_numpy(),
                   width=width, color=blues[i], label=f"tau = {threshold:g}")
        ax.set_xticks(np.arange(len(layers)), [str(k) for k in layers])
        ax.set_ylim(0, 100)
        ax.set_title(benchmark, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    _outer_labels(axes, columns, "SA layers run", "samples (%)")
    fig.tight_layout()
    _legend(fig, axes[:1], top=True)
    return fig


def policy_threshold(summary: pd.DataFrame):
    """Accuracy (%) and mean LLM-prefill FLOPs against the policy threshold, one line per benchmark."""
    if summary.empty or "threshold" not in summary:
        return None
    table = add_series(summary)
    rows = table[table["series"] == "visor_policy"]
    if rows.empty:
        return None
    fig, axes = _panels(2, 4.6, 3.3)
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    lines = list(rows.groupby(["model", "benchmark"], sort=False))
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(lines), 2)))  # all lines are VISOR (policy): one per benchmark
    for i, (key, part) in enumerate(lines):
        part = part.sort_values("threshold")
        style = {"marker": markers[i % len(markers)], "color": colours[i], "label": f"{key[1]} ({key[0]})"}
        axes[0].plot(part["threshold"], 100 * part["accuracy"], **style)
        if "mean_flops_llm_prefill" in part and part["mean_flops_llm_prefill"].notna().any():
            divisor, unit = flop_unit(rows["mean_flops_llm_prefill"])
            axes[1].plot(part["threshold"], part["mean_flops_llm_prefill"] / divisor, **style)
            axes[1].set_ylabel(f"LLM-prefill FLOPs per sample ({unit})")
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_ylim(-2, 102)
    for ax in axes:
        ax.set_xlabel("policy threshold tau")
        ax.grid(True, alpha=0.3)
    axes[0].set_title("accuracy against threshold", fontsize=10)
    axes[1].set_title("compute against threshold", fontsize=10)
    _legend(fig, axes[:1])
    fig.tight_layout()
    return fig


def hired_modes(summary: pd.DataFrame):
    """Accuracy (%) against the token budget for HiRED as published and as its official code behaves, one
    panel per model x benchmark where both ran."""
    if summary.empty or "mode" not in summary:
        return None
    table = add_series(summary)
    hired = table[table["method"] == "hired"]
    keys = [k for k, part in hired.groupby(["model", "benchmark"], sort=False) if part["mode"].nunique() > 1]
    if not keys:
        return None
    fig, axes, columns = _grid(len(keys))
    for ax, (model, benchmark) in zip(axes, keys):
        part = hired[(hired["model"] == model) & (hired["benchmark"] == benchmark)]
        for label in series_order(part):
            points = part[part["series_label"] == label].sort_values("budget")
            ax.errorbar(100 * points["budget"], 100 * points["accuracy"],
                        yerr=[100 * (points["accuracy"] - points["accuracy_ci_low"]),
                              100 * (points["accuracy_ci_high"] - points["accuracy"])],
                        color=colour(label), marker=MARKERS.get(label, "o"), capsize=2, label=label)
        full = table[(table["series"] == "full") & (table["model"] == model) & (table["benchmark"] == benchmark)]
        if not full.empty:
            ax.axhline(100 * full["accuracy"].iloc[0], color=colour("full model"), linestyle=":", label="full model")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{benchmark}\n{model}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    _outer_labels(axes, columns, "token budget (% of visual tokens)", "accuracy (%)")
    fig.tight_layout()
    _legend(fig, axes, top=True)
    return fig


def forest(comparisons: pd.DataFrame, title: str):
    """Paired differences (points) with 95% CIs, one panel per benchmark (three per row) with one row per
    comparison, coloured by the competitor; one legend above the grid."""
    if comparisons.empty:
        return None
    benchmarks = list(dict.fromkeys(comparisons["benchmark"]))
    most = max(int((comparisons["benchmark"] == b).sum()) for b in benchmarks)
    fig, axes, columns = _grid(len(benchmarks), 3, 4.0, 0.22 * most + 1.0)
    low, high = comparisons["ci_low"].min(), comparisons["ci_high"].max()
    pad = 0.05 * (high - low) + 1
    for ax, benchmark in zip(axes, benchmarks):
        rows = comparisons[comparisons["benchmark"] == benchmark].reset_index(drop=True)
        y = np.arange(len(rows))[::-1]
        for yi, (_, row) in zip(y, rows.iterrows()):
            ax.errorbar(row["difference"], yi,
                        xerr=[[row["difference"] - row["ci_low"]], [row["ci_high"] - row["difference"]]],
                        color=colour(row["b"]), marker=MARKERS.get(row["b"], "o"), markersize=4, capsize=2,
                        label=f"against {row['b']}")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, [f"{r['a_setting']} vs {r['b_setting']}" for _, r in rows.iterrows()], fontsize=6)
        ax.set_ylim(-0.7, most - 0.3)
        ax.set_xlim(min(low, 0) - pad, max(high, 0) + pad)
        ax.set_title(benchmark, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    _outer_labels(axes, columns, "anchor minus competitor (points)", "")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _legend(fig, axes, top=True)
    return fig


def training_curves(training: pd.DataFrame):
    """VISOR's training, one row of two panels per model x training budget: the loss per step (a moving mean over
    50 steps; the stage boundary dotted) and every configuration's validation accuracy (%, mean over benchmarks)
    against the step, with the host's accuracy on the same rows as a dashed line."""
    from visor_model.audit.training import validation_curves

    if training.empty or not (training["metric"] == "loss").any():
        return None
    runs = training[["model", "training"]].drop_duplicates().itertuples(index=False)
    runs = list(runs)
    fig, axes = plt.subplots(len(runs), 2, figsize=(2 * PANEL[0], PANEL[1] * len(runs)), squeeze=False)
    curves = validation_curves(training)
    for (model, budget), (loss_ax, accuracy_ax) in zip(runs, axes):
        rows = training[(training["model"] == model) & (training["training"] == budget)]
        loss = rows[rows["metric"] == "loss"].sort_values("step")
        loss_ax.plot(loss["step"], loss["value"].rolling(50, min_periods=1).mean(), color="#444444", lw=1)
        for stage_end in loss.groupby("stage")["step"].max().iloc[:-1]:
            loss_ax.axvline(stage_end, color="#999999", ls=":", lw=1)
        loss_ax.set(title=f"{model}, {budget} budget: training loss", xlabel="step", ylabel="loss (mean of 50 steps)",
                    yscale="log")
        part = curves[(curves["model"] == model) & (curves["training"] == budget)]
        configurations = sorted(c for c in part["configuration"].unique() if c != "host")
        shades = plt.cm.viridis(np.linspace(0.1, 0.85, max(1, len(configurations))))
        for configuration, shade in zip(configurations, shades):
            curve = part[part["configuration"] == configuration].sort_values("step")
            accuracy_ax.plot(curve["step"], curve["accuracy"], marker="o", ms=3, color=shade,
                             label=f"{configuration[2:]} SA layers")
        host = part[part["configuration"] == "host"]
        if not host.empty:
            accuracy_ax.axhline(float(host["accuracy"].iloc[0]), color="#d62728", ls="--", lw=1, label="host (full)")
        accuracy_ax.set(title=f"{model}, {budget} budget: validation accuracy", xlabel="step", ylabel="accuracy (%)")
        accuracy_ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
