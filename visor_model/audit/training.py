"""VISOR's training as evidence: did it converge, and how does it compare with its host and the host trained as
long (results/visor_training.csv, written from the checkpoints' records by `visor_model.audit.tables.
visor_training_table`). A verdict on VISOR is only as good as VISOR's training: the report states both."""

from __future__ import annotations

import pandas as pd

# "Converged": the validation accuracy of each configuration (mean over benchmarks) moved less than this many points
# over the last CONVERGENCE_WINDOW of training (between the validation point nearest that fraction of the steps and
# the last one).
CONVERGENCE_POINTS = 1.0
CONVERGENCE_WINDOW = 0.25


def validation_curves(training: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy (points) per model x training x configuration x step, the mean over benchmarks; the host
    (configuration "host", step 0) included."""
    rows = training[training["metric"] == "val_accuracy"] if not training.empty else training
    if rows.empty:
        return pd.DataFrame(columns=["model", "training", "configuration", "step", "accuracy"])
    curves = rows.groupby(["model", "training", "configuration", "step"], as_index=False)["value"].mean()
    return curves.assign(accuracy=100 * curves["value"]).drop(columns="value")


def convergence(training: pd.DataFrame, points: float = CONVERGENCE_POINTS,
                window: float = CONVERGENCE_WINDOW) -> pd.DataFrame:
    """Per model x training x configuration: steps, the validation accuracy at the start of the last `window` of
    training and at the end (points, mean over benchmarks), `moved` (end - start) and `converged` (|moved| <
    `points`)."""
    curves = validation_curves(training)
    curves = curves[curves["configuration"] != "host"]
    rows = []
    for (model, budget, configuration), curve in curves.groupby(["model", "training", "configuration"]):
        curve = curve.sort_values("step")
        last = curve.iloc[-1]
        target = (1 - window) * last["step"]
        start = curve.iloc[(curve["step"] - target).abs().argsort().iloc[0]]
        moved = float(last["accuracy"] - start["accuracy"])
        rows.append({"model": model, "training": budget, "configuration": configuration, "steps": int(last["step"]),
                     "from_step": int(start["step"]), "accuracy_then": float(start["accuracy"]),
                     "accuracy_end": float(last["accuracy"]), "moved": moved, "converged": abs(moved) < points})
    return pd.DataFrame(rows)


def convergence_sentence(table: pd.DataFrame, points: float = CONVERGENCE_POINTS,
                         window: float = CONVERGENCE_WINDOW) -> str:
    """One sentence per model x training: converged or not (every configuration moved less than `points` over the
    last `window` of training), with the largest move."""
    sentences = []
    for (model, budget), part in table.groupby(["model", "training"]):
        worst = part.loc[part["moved"].abs().idxmax()]
        state = "converged" if part["converged"].all() else "did not converge"
        sentences.append(
            f"VISOR on {model} ({budget} budget, {int(part['steps'].max()):,} steps) {state} by the test that every "
            f"configuration's validation accuracy moves less than {points:g} point over the last {window:.0%} of "
            f"training; the largest move: {worst['configuration']} {worst['moved']:+.1f} points from step "
            f"{int(worst['from_step']):,}")
    return ". ".join(sentences) + ("." if sentences else "")


# The quality gate: a VISOR whose largest configuration is more than this many points below its host on validation
# (mean over benchmarks, at the end of training) is under-trained, and no claim about VISOR can be decided on it.
GATE_POINTS = 3.0
GATE_COLUMNS = ("model", "training", "step", "metric", "configuration", "benchmark", "value")  # what the gate reads


def quality_gate(training: pd.DataFrame, points: float = GATE_POINTS) -> pd.DataFrame:
    """Per model x training: the largest configuration's and the host's validation accuracy at the end of training
    (points, mean over the benchmarks both have, on the training curve's rows), the gap (host - largest) and
    `passed` (gap <= `points`). Empty without training rows; a table that lacks what the gate needs is an error
    naming it."""
    columns = ["model", "training", "largest", "step", "benchmarks", "largest_accuracy", "host_accuracy", "gap",
               "passed"]
    if training.empty:
        return pd.DataFrame(columns=columns)
    missing = [c for c in GATE_COLUMNS if c not in training]
    if missing:
        raise ValueError(f"the VISOR training table (results/visor_training.csv) has no column(s) {', '.join(missing)}")
    rows = []
    for (model, budget), part in training[training["metric"] == "val_accuracy"].groupby(["model", "training"]):
        host = part[part["configuration"] == "host"]
        sizes = part["configuration"].astype(str).str.extract(r"^sa(\d+)$")[0].dropna().astype(int)
        if host.empty or sizes.empty:
            raise ValueError(f"the VISOR training table has no val_accuracy rows of the host and of VISOR's "
                             f"configurations (sa0..saK) for {model} ({budget} budget)")
        visor = part.loc[sizes.index].assign(size=sizes)
        last = visor[visor["step"] == visor["step"].max()]
        largest = last[last["size"] == last["size"].max()]
        shared = sorted(set(host["benchmark"]) & set(largest["benchmark"]))
        if not shared:
            raise ValueError(f"the VISOR training table's host and largest-configuration rows of {model} share no "
                             "benchmark")

        def mean(rows: pd.DataFrame) -> float:
            return 100 * rows[rows["benchmark"].isin(shared)].groupby("benchmark")["value"].mean().mean()

        gap = mean(host) - mean(largest)
        rows.append({"model": model, "training": budget, "largest": f"sa{int(largest['size'].iloc[0])}",
                     "step": int(largest["step"].iloc[0]), "benchmarks": len(shared),
                     "largest_accuracy": mean(largest), "host_accuracy": mean(host), "gap": gap,
                     "passed": gap <= points})
    return pd.DataFrame(rows, columns=columns)


def against_hosts(summary: pd.DataFrame, samples: pd.DataFrame, controls: dict[str, str], seed: int = 0,
                  resamples: int = 2000) -> pd.DataFrame:
    """Every full-budget VISOR setting (fixed configurations and policies at full tokens) against its host and
    against the host's continued-training control (`controls`: control model -> the base it continues), per
    benchmark: accuracy (points), the LLM-prefill FLOP ratio, and the paired differences VISOR - host and VISOR -
    control on the same test documents with 95% bootstrap CIs. What VISOR gains over its host that the control
    gains too is further training, not VISOR."""
    from visor_model.audit.analysis import paired_difference

    if summary.empty or "visor" not in set(summary["method"]):
        return pd.DataFrame()
    full = summary[summary["method"] == "llava_full"]
    budget = summary["visor_training"].fillna("full") if "visor_training" in summary else "full"
    token_budget = summary["token_budget"] if "token_budget" in summary else pd.Series(float("nan"), summary.index)
    visor = summary[(summary["method"] == "visor") & (budget == "full") & token_budget.isna()]
    control_of = {base: control for control, base in controls.items()}
    rows = []
    for _, row in visor.iterrows():
        host = full[(full["model"] == row["model"]) & (full["benchmark"] == row["benchmark"])]
        control = full[(full["model"] == control_of.get(row["model"])) & (full["benchmark"] == row["benchmark"])]
        setting = (f"{int(row['sa_layers'])} SA layers" if pd.notna(row["sa_layers"])
                   else f"policy tau={row['threshold']:g}")
        out = {"model": row["model"], "benchmark": row["benchmark"], "visor": setting,
               "accuracy": 100 * row["accuracy"], "llm_prefill_ratio": row.get("llm_prefill_ratio")}
        for name, other in (("host", host), ("control", control)):
            if other.empty:
                out.update({f"{name}_accuracy": float("nan"), f"minus_{name}": float("nan"),
                            f"minus_{name}_ci_low": float("nan"), f"minus_{name}_ci_high": float("nan")})
                continue
            difference = paired_difference(samples, [(row, other.iloc[0])], seed=seed, resamples=resamples)
            out.update({f"{name}_accuracy": 100 * other.iloc[0]["accuracy"], f"minus_{name}": difference["mean"],
                        f"minus_{name}_ci_low": difference["ci_low"], f"minus_{name}_ci_high": difference["ci_high"]})
        rows.append(out)
    return pd.DataFrame(rows)
