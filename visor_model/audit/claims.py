"""The claims audit: each claim of `config/claims.yaml` is measured by a named computation over the result
tables (summary.csv, samples.csv, latency.csv, visor_training.csv) and judged by its test.

    claims = load_claims("config/claims.yaml")
    tables = Tables.read("results/summary.csv", "results/samples.csv", "results/latency.csv",
                         "results/visor_training.csv")
    table = audit(claims, tables, profile="offline")

A claim lists the profiles where it is testable (`offline`: the small reference models on synthetic
benchmarks; `paper`: the papers' checkpoints on the lmms-eval benchmarks). Outside them its verdict is
"not testable in this profile", with the claim's `not_testable_reason`. Inside them, a computation that finds
the runs it needs missing (a method, a benchmark, a column) also yields "not testable in this profile", with
the reason naming what is missing, and so does a claim with `min_configurations: N` (it is about the shape
of VISOR's family of configurations) on a checkpoint with fewer viable configurations. Otherwise the test
decides. Each test is a range of values that hold:

  at_least {target, tolerance}   value >= target - tolerance
  at_most {target, tolerance}    value <= target + tolerance
  within {target, tolerance}     |value - target| <= tolerance
  between {low, high}            low <= value <= high
  greater {threshold}            value > threshold
  less {threshold}               value < threshold
  no_worse_than {margin}         value >= -margin (non-inferiority)
  equivalent {margin}            -margin <= value <= margin

A measurement with an interval (a 95% CI, or the decision range of the saving-without-loss computations) is
"reproduced" when the whole interval holds, "not reproduced" when none of it does, and "inconclusive" when it
straddles an edge of the range (the reason gives the interval and the edge): the data cannot decide. Without
an interval (latency ratios, FLOP ratios) the point value decides between "reproduced" and "not reproduced".

VISOR's quality gate: where `visor_training.csv` shows VISOR's largest configuration more than `gate_points`
(config audit.visor_gate_points) below its host on the validation rows at the last training step, every VISOR
claim (one whose arguments name a VISOR series) reads "inconclusive": an under-trained VISOR says nothing
about the paper's method. The main verdicts use the VISOR runs at the full training budget (summary column
`visor_training` = "full"; a table without the column is all "full"); column `at_half_budget` holds each VISOR
claim's verdict on the "half" budget runs instead (blank where there are none, and for the other claims).

Accuracies and differences are in points: `accuracy` x 100, the mean per-sample score under each benchmark's
primary metric (exact match, ANLS, relaxed accuracy, ...; visor_model.audit.tables); `metric_value` reads
lmms-eval's own aggregate on the task's scale (OCRBench 0-1000, MME perception 0-2000). A computation's
`metric` argument names the primary metric the claim is about; a benchmark configured with another one makes
the claim not testable. CIs are 95% bootstrap intervals over documents, paired where two runs share documents.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from visor_model.audit import analysis
from visor_model.audit.analysis import add_series, paired_difference, sample_scores, setting_label
from visor_model.audit.training import GATE_POINTS as VISOR_GATE_POINTS  # the default of audit.visor_gate_points
from visor_model.audit.training import quality_gate

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOT_TESTABLE = "not testable in this profile"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE)
PROFILES = ("offline", "paper")
CLAIM_FIELDS = ("id", "claim", "source", "paper_value", "unit", "profiles", "computation", "test")
COLUMNS = ["id", "claim", "source", "provenance", "profile", "paper_value", "unit", "test", "tolerance",
           "reproduced_value", "ci_low", "ci_high", "interval", "verdict", "at_half_budget", "reason",
           "computation", "detail"]
VISOR_SERIES = ("visor_fixed", "visor_policy", "visor_tr")
VISOR_TRAININGS = ("full", "half")  # summary/samples column visor_training of VISOR's rows: its training budget


class NotTestable(Exception):
    """The runs a computation needs are not in the results (the message says which)."""


@dataclass
class Measurement:
    """A computation's value with its interval [ci_low, ci_high] (`interval` names it: a 95% CI, or a decision
    range) and `note`, what the reason must say about how it was measured (e.g. a multiplicity correction)."""
    value: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    detail: str = ""
    interval: str = "95% CI"
    note: str = ""


@dataclass
class Tables:
    """The result tables the audit reads. `training`: results/visor_training.csv (long format, columns
    visor_model.audit.tables.TRAINING_COLUMNS: VISOR's training loss and validation accuracy per configuration,
    the host's beside it)."""
    summary: pd.DataFrame
    samples: pd.DataFrame
    latency: pd.DataFrame = field(default_factory=pd.DataFrame)
    training: pd.DataFrame = field(default_factory=pd.DataFrame)
    seed: int = 0
    resamples: int = analysis.BOOTSTRAP_RESAMPLES

    @classmethod
    def read(cls, summary, samples, latency=None, training=None, seed: int = 0,
             resamples: int = analysis.BOOTSTRAP_RESAMPLES):
        return cls(read_table(summary), read_table(samples), read_table(latency), read_table(training), seed,
                   resamples)

    def visor_trainings(self) -> set[str]:
        """The training budgets ("full", "half") of the VISOR runs in the summary."""
        return set(_visor_training(self.summary)) - {""}

    def variant(self, training: str) -> Tables:
        """These tables with VISOR's runs (summary, samples) and training rows of one training budget only."""
        rows = self.training
        return replace(self, summary=_only_training(self.summary, training),
                       samples=_only_training(self.samples, training),
                       training=rows[rows["training"] == training] if "training" in rows else rows)


def _visor_training(table: pd.DataFrame) -> np.ndarray:
    """Per row: VISOR's training budget ("full" where the column is missing or blank), "" for other methods."""
    if table.empty or "method" not in table:
        return np.array([""] * len(table), dtype=object)
    values = (table["visor_training"].fillna("").astype(str).str.strip() if "visor_training" in table
              else pd.Series("", index=table.index))
    return np.where(table["method"] == "visor", values.replace("", "full"), "").astype(object)


def _only_training(table: pd.DataFrame, training: str) -> pd.DataFrame:
    """The rows of other methods and VISOR's rows of one training budget."""
    if table.empty:
        return table
    budget = _visor_training(table)
    return table[(budget == "") | (budget == training)]


def read_table(path) -> pd.DataFrame:
    """A CSV table, or an empty frame when the path is None, missing or empty."""
    if path is None or not Path(path).exists() or Path(path).stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(path, low_memory=False)  # one pass: a column mixing blanks and words keeps one type
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


# --- selection helpers -------------------------------------------------------------------------------------

def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_list(value):
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _matches(value, wanted) -> bool:
    if _missing(wanted):
        return _missing(value)
    if _missing(value):
        return False
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        try:
            return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return str(value) == str(wanted)


RELATIVE_SA = {"largest": lambda v: max(v), "smallest": lambda v: min(v)}


def _resolve_sa(wanted, available: list[int]):
    """sa_layers given as 'largest', 'smallest' or 'largest-K' resolves against the counts that ran."""
    if not isinstance(wanted, str):
        return wanted
    if not available:
        return None
    if wanted in RELATIVE_SA:
        return RELATIVE_SA[wanted](available)
    if wanted.startswith("largest-"):
        target = max(available) - int(wanted.split("-", 1)[1])
        return target if target in available else None
    raise ValueError(f"unknown sa_layers selector {wanted!r}")


def select(summary: pd.DataFrame, family=None, series=None, setting=None, cluster=None, kind=None,
           benchmark=None, model=None) -> pd.DataFrame:
    """Summary rows (with series columns) of a family/model, series, setting filter and benchmark selection."""
    if summary.empty:
        return add_series(summary)
    table = add_series(summary)
    if family is not None and "family" in table:
        table = table[table["family"].isin(_as_list(family))]
    if model is not None:
        table = table[table["model"].isin(_as_list(model))]
    if series is not None:
        table = table[table["series"].isin(_as_list(series))]
    if cluster is not None:
        table = table[table["cluster"].isin(_as_list(cluster))] if "cluster" in table else table[:0]
    if kind is not None:
        table = table[table["kind"].isin(_as_list(kind))] if "kind" in table else table[:0]
    if benchmark is not None:
        table = table[table["benchmark"].isin(_as_list(benchmark))]
    for key, wanted in (setting or {}).items():
        if key not in table:
            table = table[:0] if wanted is not None else table
            continue
        if key == "sa_layers" and isinstance(wanted, str):
            parts = []
            for _, part in table.groupby("model"):
                available = sorted(int(v) for v in part["sa_layers"].dropna().unique())
                resolved = _resolve_sa(wanted, available)
                parts.append(part[[_matches(v, resolved) for v in part["sa_layers"]]] if resolved is not None
                             else part[:0])
            table = pd.concat(parts) if parts else table[:0]
            continue
        table = table[[_matches(v, wanted) for v in table[key]]]
    return table


def describe_selection(family=None, series=None, setting=None, cluster=None, kind=None, benchmark=None) -> str:
    what = " or ".join(analysis.SERIES_LABELS.get(s, s) for s in _as_list(series)) or "any method"
    if setting:
        what += f" ({', '.join(f'{k} {v}' for k, v in setting.items())})"
    where = []
    if family:
        where.append(f"a {family} model")
    for name, value in (("cluster", cluster), ("kind", kind), ("benchmark", benchmark)):
        if value is not None:
            where.append(f"{name} {'/'.join(map(str, _as_list(value)))}")
    return what + (" on " + ", ".join(where) if where else "")


def require(rows: pd.DataFrame, **selection) -> pd.DataFrame:
    if rows.empty:
        raise NotTestable(f"the results have no run of {describe_selection(**selection)}")
    return rows


def _flop_column(summary: pd.DataFrame, column: str = "mean_flops_llm_prefill") -> None:
    if column not in summary or summary[column].isna().all():
        raise NotTestable(f"the results have no {column} column (FLOP accounting missing)")


def _spec(spec) -> dict:
    """A run spec of a claim: a series name (or a list of them), or {series, setting}."""
    if isinstance(spec, (str, list, tuple)):
        return {"series": spec, "setting": {}}
    return {"series": spec["series"], "setting": dict(spec.get("setting") or {})}


def _benchmarks(cluster=None, kind=None, benchmark=None) -> dict:
    """The benchmark selection of a computation's arguments, the unset ones left out."""
    return {key: value for key, value in (("cluster", cluster), ("kind", kind), ("benchmark", benchmark))
            if value is not None}


# --- computations ------------------------------------------------------------------------------------------

COMPUTATIONS: dict = {}


def computation(function):
    COMPUTATIONS[function.__name__] = function
    return function


def _check_metric(rows: pd.DataFrame, metric) -> None:
    """A claim's `metric`: the primary metric it is about (e.g. anls, mme_perception_score). Rows of
    benchmarks configured with another primary metric make it not testable (the numbers would not compare)."""
    if metric is None or rows.empty:
        return
    configured = rows.get("metric", pd.Series([None] * len(rows), index=rows.index))
    other = sorted({f"{b} ({m})" for b, m in zip(rows["benchmark"], configured) if m != metric})
    if other:
        raise NotTestable(f"the claim is about {metric}, but the primary metric of {', '.join(other)} in this "
                          f"config is another (benchmarks.<name>.metric)")


def _metrics_used(rows: pd.DataFrame) -> str:
    """'docvqa_val: anls, ocrbench: ocrbench_accuracy' for a detail."""
    if "metric" not in rows:
        return ", ".join(dict.fromkeys(rows["benchmark"]))
    return ", ".join(dict.fromkeys(f"{b}: {m}" for b, m in zip(rows["benchmark"], rows["metric"])))


@computation
def metric_value(tables: Tables, family, series, benchmark, setting=None, metric=None) -> Measurement:
    """The primary metric of one run on `benchmark` as lmms-eval aggregates it, on the task's own scale
    (points 0-100 for ANLS and accuracies, OCRBench 0-1000, MME perception 0-2000; the summary's
    metric_value), with the summary's bootstrap CI over its documents where the metric is a per-sample mean
    (metric_ci_low/high; none for corpus-level scores). `metric`: the primary metric the claim is about
    (checked)."""
    rows = require(select(tables.summary, family, series, setting, benchmark=benchmark), family=family,
                   series=series, setting=setting, benchmark=benchmark)
    _check_metric(rows, metric)
    row = rows.iloc[0]
    if "metric_value" not in rows or _missing(row["metric_value"]):
        raise NotTestable(f"the summary table has no value of {benchmark}'s primary metric "
                          f"({row.get('metric', 'unknown')}: lmms-eval reported none)")
    return Measurement(float(row["metric_value"]), float(row["metric_ci_low"]), float(row["metric_ci_high"]),
                       f"{row['model']} {setting_label(row)} on {benchmark}: {row['metric']} on the "
                       f"{row['metric_scale']} scale, n={int(row['n'])}")


def _average_with_ci(tables: Tables, rows: pd.DataFrame) -> Measurement:
    """The mean over `rows` (one per benchmark) of the primary score in points, with a bootstrap CI."""
    groups = {}
    for _, row in rows.iterrows():
        scores = sample_scores(tables.samples, row)
        if len(scores):
            groups[row["benchmark"]] = scores.to_numpy()
    value = 100 * rows["accuracy"].mean()
    if len(groups) == len(rows):
        _, low, high = analysis.bootstrap_mean(groups, tables.resamples, tables.seed)
        return Measurement(value, 100 * low, 100 * high)
    return Measurement(value)


def _saving(rows: pd.DataFrame, flops: str = "llm_prefill", full: pd.DataFrame | None = None) -> float:
    """FLOP saving of one setting's rows: 1 / mean over benchmarks of its FLOPs relative to the full model's."""
    if flops == "llm_prefill":
        ratio = rows["llm_prefill_ratio"].astype(float).mean()
        return 1 / ratio if np.isfinite(ratio) and ratio > 0 else float("nan")
    terms = [f"mean_flops_{t}" for t in ("vision", "projector", "selection", "llm_prefill")]
    if full is None or any(t not in rows for t in terms):
        return float("nan")
    base = full.set_index("benchmark")[terms].fillna(0).sum(axis=1)
    own = rows.set_index("benchmark")[terms].fillna(0).sum(axis=1)
    ratio = (own / base.reindex(own.index)).mean()
    return 1 / ratio if np.isfinite(ratio) and ratio > 0 else float("nan")


@dataclass
class _Candidate:
    """One setting tried by a saving-without-loss computation: its summary rows (one per benchmark), the rows
    of the reference it must not lose against (same model) and its FLOP saving over that reference."""
    label: str
    rows: pd.DataFrame
    reference: pd.DataFrame
    saving: float


def _savings_without_loss(tables: Tables, candidates: list[_Candidate], groups: list, margin: float,
                          reference: str) -> Measurement:
    """Saving without loss as a paired non-inferiority test of every setting tried. Per setting and group
    (a cluster, or a benchmark): the paired CI over documents of (setting - reference) in points (mean over the
    group's benchmarks), at the Bonferroni-corrected level 1 - 0.05 / m for the m settings tried. A setting
    *qualifies* when the CI's lower end is >= -margin on every group (an intersection-union test: all groups
    must pass, so no correction across groups is needed) and *loses* when its upper end is < -margin on some
    group; otherwise it is undecided. Value: the largest saving among the qualifying settings (1x, the
    reference itself, when none does); interval: the decision range from there to the largest saving of a
    setting not shown to lose. A claimed saving S is reproduced when the value reaches it, not reproduced when
    no setting that saves S or more escapes "loses" (sound at the familywise 5% level: each setting is judged
    at 0.05 / m), and inconclusive in between: the data cannot decide."""
    tried, skipped = [], []
    for candidate in candidates:
        pairs = []
        for column, value in groups:
            mine = candidate.rows[candidate.rows[column] == value]
            base = candidate.reference[candidate.reference[column] == value]
            pairs.append([(x, y) for _, x in mine.iterrows() for _, y in base[base["benchmark"] == x["benchmark"]]
                          .iterrows()])
        usable = np.isfinite(candidate.saving) and all(
            p and analysis.difference_matrices(tables.samples, p) for p in pairs)
        (tried if usable else skipped).append((candidate, pairs))
    if not tried:
        raise NotTestable(f"no setting has paired runs against {reference} on every "
                          f"{'/'.join(str(v) for _, v in groups)}")
    level = 1 - 0.05 / len(tried)
    qualify, undecided, lose, lines = [], [], [], []
    for candidate, pairs in tried:
        gaps = [paired_difference(tables.samples, p, seed=tables.seed, resamples=tables.resamples, level=level)
                for p in pairs]
        if all(g["ci_low"] >= -margin for g in gaps):
            word, group = "qualifies", qualify
        elif any(g["ci_high"] < -margin for g in gaps):
            word, group = "loses", lose
        else:
            word, group = "undecided", undecided
        group.append(candidate)
        lines.append(f"{candidate.label}: {candidate.saving:.2f}x, "
                     + ", ".join(f"{value} {g['mean']:+.1f} [{g['ci_low']:+.1f}, {g['ci_high']:+.1f}]"
                                 for (_, value), g in zip(groups, gaps)) + f" ({word})")
    value = max([1.0] + [c.saving for c in qualify])
    high = max([value] + [c.saving for c in undecided])
    where = "/".join(str(v) for _, v in groups)
    note = (f"{len(tried)} settings tried, each judged on its paired CI against {reference} on {where} at the "
            f"Bonferroni-corrected {100 * level:.2f}% level (0.05/{len(tried)}): {len(qualify)} qualify (at most "
            f"{margin:.1f} points below it on every one), {len(lose)} lose more, {len(undecided)} undecided; the "
            f"decision range runs from the largest saving shown without loss (1x: {reference} itself) to the "
            f"largest not shown to lose"
            + (f"; {len(skipped)} without paired runs on every group not counted" if skipped else ""))
    return Measurement(value, value, high, "; ".join(lines), interval="decision range", note=note)


def _cluster_groups(cluster, benchmark) -> list:
    return ([("benchmark", b) for b in _as_list(benchmark)] if benchmark
            else [("cluster", c) for c in _as_list(cluster)])


@computation
def max_saving_at_accuracy(tables: Tables, family, series, margin=1.0, cluster=("easy", "hard"), benchmark=None,
                           metric=None, flops="llm_prefill") -> Measurement:
    """The largest FLOP saving over the full model among the settings of `series` (fixed configurations,
    policies, ...) that lose no more than `margin` points on every cluster (or on each `benchmark`), judged
    as a paired non-inferiority test of every setting tried with a Bonferroni correction for their number
    (`_savings_without_loss`). flops: llm_prefill (the papers' convention) or prefill_with_vision (vision
    tower, projector and selection counted too)."""
    _flop_column(tables.summary)
    groups = _cluster_groups(cluster, benchmark)
    full_rows = select(tables.summary, family, "full")
    candidates = []
    for model, full in full_rows.groupby("model"):
        _check_metric(pd.concat([full[full[column] == value] for column, value in groups]), metric)
        for _, rows in select(tables.summary, family, series, model=model).groupby("setting_id"):
            candidates.append(_Candidate(f"{model} {setting_label(rows.iloc[0])}", rows, full,
                                         _saving(rows, flops, full)))
    if not candidates:
        raise NotTestable(f"the results have no run of {describe_selection(family, series)} beside a full model")
    if not any(np.isfinite(c.saving) for c in candidates):
        raise NotTestable("no FLOP saving could be computed (the full model's LLM-prefill FLOPs are missing)")
    _at_floor(tables, [row for _, row in full_rows.iterrows()])
    return _savings_without_loss(tables, candidates, groups, margin, "the full model")


@computation
def extra_saving_without_loss(tables: Tables, family, a, b, match_on=("threshold",), margin=1.0,
                              cluster=("easy", "hard"), benchmark=None) -> Measurement:
    """How many times fewer LLM-prefill FLOPs series `a` spends than series `b` at the same `match_on`
    settings (1 / the mean over benchmarks of FLOPs(a) / FLOPs(b)), counted only for the settings of `a`
    that lose no more than `margin` points against their `b` partner on every cluster (or `benchmark`): the
    largest such saving, judged as a paired non-inferiority test of every matched pair with a Bonferroni
    correction (`_savings_without_loss`). A saving bought with accuracy does not count."""
    _flop_column(tables.summary)
    groups = _cluster_groups(cluster, benchmark)
    pairs = _pairs(tables, family, a, b, list(match_on), {})
    candidates = {}
    for x, y in pairs:
        candidates.setdefault((x["model"], x["setting_id"], y["setting_id"]), []).append((x, y))
    built = []
    for (model, _, _), matched in candidates.items():
        mine, theirs = pd.DataFrame([x for x, _ in matched]), pd.DataFrame([y for _, y in matched])
        ratio = float(np.mean([float(x["mean_flops_llm_prefill"]) / float(y["mean_flops_llm_prefill"])
                               for x, y in matched]))
        built.append(_Candidate(f"{model} {setting_label(matched[0][0])} vs {setting_label(matched[0][1])}",
                                mine, theirs, 1 / ratio if np.isfinite(ratio) and ratio > 0 else float("nan")))
    _at_floor(tables, [row for pair in pairs for row in pair])
    return _savings_without_loss(tables, built, groups, margin,
                                 f"{describe_selection(None, b)} at the same {', '.join(match_on)}")


@computation
def cluster_average_at_saving(tables: Tables, family, series, cluster=None, benchmark=None, saving=None,
                              metric=None) -> Measurement:
    """The mean primary score (points) over a cluster's benchmarks (or the named ones) of the setting of
    `series` whose FLOP saving is nearest to `saving` (the paper's operating point; any setting of the full
    model). Each benchmark counts with its own metric (OCRBench's 0-1000 score as its correct share in points)."""
    where = {"cluster": cluster, "benchmark": benchmark}
    rows = require(select(tables.summary, family, series, **where), family=family, series=series, **where)
    choice = None
    if saving is not None:
        _flop_column(tables.summary)
        options = [(abs(math.log(s / saving)), setting_id, s) for setting_id, part in
                   select(tables.summary, family, series).groupby("setting_id")
                   if np.isfinite(s := _saving(part))]
        if not options:
            raise NotTestable("no FLOP saving could be computed (llm_prefill_ratio missing)")
        _, choice, achieved = min(options)
        rows = require(rows[rows["setting_id"] == choice], family=family, series=series, **where)
    rows = rows[rows["setting_id"] == rows["setting_id"].iloc[0]]
    _check_metric(rows, metric)
    measurement = _average_with_ci(tables, rows)
    measurement.detail = (f"{rows.iloc[0]['model']} {setting_label(rows.iloc[0])}"
                          + (f" (saving {achieved:.2f}x, nearest to {saving}x)" if choice else "")
                          + f" over {_metrics_used(rows)}")
    return measurement


def _pairs(tables: Tables, family, a, b, match_on, benchmarks: dict):
    a, b = _spec(a), _spec(b)
    a_rows = require(select(tables.summary, family, a["series"], a["setting"], **benchmarks), family=family,
                     **a, **benchmarks)
    b_rows = require(select(tables.summary, family, b["series"], b["setting"], **benchmarks), family=family,
                     **b, **benchmarks)
    pairs = []
    for _, x in a_rows.iterrows():
        same = b_rows[(b_rows["model"] == x["model"]) & (b_rows["benchmark"] == x["benchmark"])]
        for key in match_on:
            same = same[[_matches(v, x.get(key)) for v in same[key]]] if key in same else same[:0]
        pairs += [(x, y) for _, y in same.iterrows()]
    if not pairs:
        raise NotTestable(f"no run of {describe_selection(family, **a)} has a counterpart of "
                          f"{describe_selection(family, **b)} on the same model and benchmark"
                          + (f" with the same {', '.join(match_on)}" if match_on else ""))
    return pairs


def _at_floor(tables: Tables, rows) -> None:
    """Runs that score the same on every document (all wrong, or all right) carry no information about a
    difference: the models are not trained enough (the micro config) or the benchmark is saturated."""
    values = pd.concat([sample_scores(tables.samples, row) for row in rows]) if len(rows) else pd.Series()
    if len(values) and values.nunique() == 1:
        raise NotTestable(f"every compared run scores {100 * values.iloc[0]:.0f} on every document (models "
                          f"at floor or ceiling), so no comparison is informative")


def _difference(tables: Tables, pairs, metric=None) -> Measurement:
    _check_metric(pd.DataFrame([row for pair in pairs for row in pair]), metric)
    _at_floor(tables, [row for pair in pairs for row in pair])
    result = paired_difference(tables.samples, pairs, seed=tables.seed, resamples=tables.resamples)
    if not result["pairs"]:
        raise NotTestable("the per-sample table has no shared documents for these runs")
    models = sorted({a["model"] for a, _ in pairs})
    benchmarks = sorted({a["benchmark"] for a, _ in pairs})
    detail = (f"{result['pairs']} paired runs on {', '.join(benchmarks)} ({', '.join(models)}), "
              f"{result['n_docs']} document pairs")
    return Measurement(result["mean"], result["ci_low"], result["ci_high"], detail)


@computation
def paired_gap(tables: Tables, family, a, b, match_on=(), metric=None, cluster=None, kind=None,
               benchmark=None) -> Measurement:
    """Mean paired difference a - b (points) over the same documents, runs matched on model, benchmark and
    the `match_on` setting fields (e.g. budget)."""
    pairs = _pairs(tables, family, a, b, list(match_on), _benchmarks(cluster, kind, benchmark))
    return _difference(tables, pairs, metric)


@computation
def gap_between_groups(tables: Tables, family, a, b, group, first, second, match_on=(),
                       metric=None) -> Measurement:
    """(a - b on the `first` benchmarks) - (a - b on the `second`), `group` being cluster or kind: e.g. how
    much more token dropping loses on fine-grained than on coarse tasks. Independent bootstrap per group."""
    stats, details = [], []
    groups = [_pairs(tables, family, a, b, list(match_on), {group: value}) for value in (first, second)]
    _check_metric(pd.DataFrame([row for pairs in groups for pair in pairs for row in pair]), metric)
    _at_floor(tables, [row for pairs in groups for pair in pairs for row in pair])
    for k, (value, pairs) in enumerate(zip((first, second), groups)):
        aligned = analysis.difference_matrices(tables.samples, pairs)
        if not aligned:
            raise NotTestable("the per-sample table has no shared documents for these runs")
        stats.append(analysis.bootstrap_distribution(aligned, tables.resamples, tables.seed + k))
        details.append(f"{value}: {100 * stats[-1][0]:+.1f}")
    point = 100 * (stats[0][0] - stats[1][0])
    spread = 100 * (stats[0][1] - stats[1][1])
    return Measurement(point, *analysis.percentile_interval(spread),
                       "a - b " + ", ".join(details) + " points")


@computation
def paired_gap_at_matched_flops(tables: Tables, family, a, b, metric=None, cluster=None, kind=None,
                                benchmark=None) -> Measurement:
    """Mean paired difference (points) of the settings of series `a` against the accuracy-FLOP curve of series
    `b` at the same LLM-prefill FLOPs (same model, benchmark and documents).

    The curve is b's settings on that model and benchmark sorted by mean LLM-prefill FLOPs, linearly
    interpolated at the a-setting's FLOPs (`analysis.curve_partners`); per document, the two bracketing
    settings' scores are mixed with the interpolation's weights, so the comparison stays paired by document.
    Never extrapolated: a setting of `a` cheaper than b's cheapest (or dearer than b's dearest) has no
    partner and is not counted, so b is never given more compute than a.
    Pooling: the statistic is the mean over benchmarks of the mean gap over that benchmark's partnered
    settings; its CI is a bootstrap over documents that resamples each benchmark's documents once, jointly for
    all its settings (`analysis.bootstrap_distribution`), so the correlation between settings evaluated on the
    same documents is carried into the interval and one interval is judged: no multiplicity correction is
    needed. The detail gives every setting's own gap."""
    _flop_column(tables.summary)
    benchmarks = _benchmarks(cluster, kind, benchmark)
    a_rows = require(select(tables.summary, family, a, **benchmarks), family=family, series=a, **benchmarks)
    b_rows = require(select(tables.summary, family, b, **benchmarks), family=family, series=b, **benchmarks)
    _check_metric(pd.concat([a_rows, b_rows]), metric)
    differences, compared, lines, outside = {}, [], [], []
    for _, x in a_rows.iterrows():
        curve = b_rows[(b_rows["model"] == x["model"]) & (b_rows["benchmark"] == x["benchmark"])]
        partners = analysis.curve_partners(curve, float(x["mean_flops_llm_prefill"]))
        if not partners:
            outside.append(f"{setting_label(x)} on {x['benchmark']}")
            continue
        diff = analysis.interpolated_difference(tables.samples, x, partners)
        if not len(diff):
            continue
        differences.setdefault((x["model"], x["benchmark"]), []).append(diff)
        compared += [x] + [row for row, _ in partners]
        lines.append(f"{setting_label(x)} on {x['benchmark']} vs "
                     + " + ".join(f"{w:.2f} x {setting_label(row)}" for row, w in partners)
                     + f": {100 * diff.mean():+.1f}")
    if not differences:
        raise NotTestable(f"no run of {describe_selection(family, a)} lies inside the LLM-prefill FLOP range of "
                          f"{describe_selection(None, b)}'s runs on the same model and benchmark, with shared "
                          f"documents (the competitor's curve is interpolated, never extrapolated)")
    _at_floor(tables, compared)
    matrices = analysis.aligned_matrices(differences)
    point, stats = analysis.bootstrap_distribution(matrices, tables.resamples, tables.seed,
                                                   weigh_groups_equally=True)
    low, high = analysis.percentile_interval(stats)
    detail = (f"{len(lines)} settings of {describe_selection(None, a)} against the curve of "
              f"{describe_selection(None, b)} on {len(matrices)} benchmark(s), "
              f"{sum(m.size for m in matrices.values())} document pairs; "
              + (f"{len(outside)} outside its FLOP range, not counted ({'; '.join(outside)}); " if outside else "")
              + "; ".join(lines))
    return Measurement(100 * point, 100 * low, 100 * high, detail)


@computation
def policy_compute_gap(tables: Tables, family, series="visor_policy", first="hard", second="easy",
                       group="cluster") -> Measurement:
    """Mean SA layers VISOR's policy (`series`: visor_policy, or visor_tr) runs per sample on the `first`
    benchmarks minus on the `second` (same policy settings), from the per-sample `sa_layers` column."""
    samples = tables.samples
    if samples.empty or "sa_layers" not in samples:
        raise NotTestable("the per-sample table has no sa_layers column")
    policy = select(tables.summary, family, series)
    require(policy, family=family, series=series)
    _at_floor(tables, [row for _, row in policy.iterrows()])  # a router trained on runs at floor learns nothing
    means, details = [], []
    for k, value in enumerate((first, second)):
        rows = policy[policy[group] == value] if group in policy else policy[:0]
        groups = {}
        for _, row in rows.iterrows():
            part = samples[(samples["model"] == row["model"]) & (samples["method"] == "visor")
                           & (samples["setting_id"] == row["setting_id"]) & (samples["benchmark"] == row["benchmark"])]
            values = part["sa_layers"].dropna().to_numpy(dtype=float)
            if len(values):
                groups[(row["benchmark"], row["setting_id"])] = values[None, :]
        if not groups:
            raise NotTestable(f"the policy has no per-sample sa_layers on {group} {value}")
        means.append(analysis.bootstrap_distribution(groups, tables.resamples, tables.seed + k))
        details.append(f"{value} {means[-1][0]:.2f}")
    spread = means[0][1] - means[1][1]
    return Measurement(means[0][0] - means[1][0], *analysis.percentile_interval(spread),
                       "mean SA layers per sample: " + ", ".join(details))


def _latency_rows(tables: Tables, family, series, setting=None) -> pd.DataFrame:
    latency = tables.latency
    if latency.empty:
        raise NotTestable("there is no latency table (results/latency.csv)")
    if "family" not in latency and not tables.summary.empty:
        families = tables.summary.drop_duplicates("model").set_index("model")["family"]
        latency = latency.assign(family=latency["model"].map(families))
    rows = select(latency, family, series, setting)
    return require(rows, family=family, series=series, setting=setting)


SPEEDUP_COLUMNS = {"prefill_s": "prefill_speedup", "decode_per_token_s": "decode_speedup",
                   "generate_s": "generate_speedup"}


def _with_ci(row, column: str, transform=lambda v: v) -> Measurement:
    """A latency-table column (median over repeats) and its CI ends (`<column>_ci_low/_ci_high`), through a
    monotonically increasing `transform`; NaN ends where the table has none (fewer than 6 repeats)."""
    if column not in row or _missing(row[column]):
        raise NotTestable(f"the latency table has no {column} (no full-model latency of {row['model']}?)")
    low, high = (row.get(f"{column}_{end}", float("nan")) for end in ("ci_low", "ci_high"))
    low, high = (float("nan") if _missing(v) else float(transform(v)) for v in (low, high))
    return Measurement(float(transform(row[column])), low, high)


@computation
def latency_ratio(tables: Tables, family, series, setting=None, timing="prefill_s", form="speedup") -> Measurement:
    """Measured latency against the full model of the same model and latency run: speedup = full / method,
    reduction_percent = 100 x (1 - method / full) = 100 x (1 - 1 / speedup). The median over the interleaved
    repeats of the paired per-repeat speed-up, with its 95% CI (visor_model.audit.tables.latency_table)."""
    if timing not in SPEEDUP_COLUMNS:
        raise ValueError(f"timing must be one of {', '.join(SPEEDUP_COLUMNS)}, got {timing!r}")
    rows = _latency_rows(tables, family, series, setting)
    full = _latency_rows(tables, family, "full")
    row = rows.iloc[0]
    base = full[full["model"] == row["model"]]
    if base.empty:
        raise NotTestable(f"no full-model latency of {row['model']}")
    base = base.iloc[0]
    m = _with_ci(row, SPEEDUP_COLUMNS[timing], (lambda s: s) if form == "speedup" else (lambda s: 100 * (1 - 1 / s)))
    m.detail = (f"{row['model']} {setting_label(row)}: {timing} median {row[f'{timing}_median']:.4g} s vs full "
                f"{base[f'{timing}_median']:.4g} s on {row.get('device', '?')}; paired over {row.get('repeats', '?')} "
                "interleaved repeats")
    return m


@computation
def decode_share_of_prefill_gain(tables: Tables, family, series, setting=None) -> Measurement:
    """(decode_speedup - 1) / (prefill_speedup - 1) of one setting: the share of the prefill speed-up that
    per-token decoding also gets (0: none, 1: all of it); per repeat, its median and CI over the repeats."""
    rows = _latency_rows(tables, family, series, setting)
    row = rows.iloc[0]
    if _missing(row.get("prefill_speedup")) or _missing(row.get("decode_speedup")):
        raise NotTestable("the latency table has no speed-ups (no full-model latency)")
    if row["prefill_speedup"] <= 1:
        raise NotTestable(f"the prefill is not faster ({row['prefill_speedup']:.2f}x), so there is no gain to share")
    m = _with_ci(row, "decode_share_of_prefill_gain")
    m.detail = (f"{row['model']} {setting_label(row)}: prefill {row['prefill_speedup']:.2f}x, "
                f"decode {row['decode_speedup']:.2f}x")
    return m


@computation
def memory_saving(tables: Tables, family, series, setting=None) -> Measurement:
    """Peak memory of the full model minus the method's (GB = 1024 MB), per repeat; its median and CI."""
    rows = _latency_rows(tables, family, series, setting)
    full = _latency_rows(tables, family, "full")
    row = rows.iloc[0]
    base = full[full["model"] == row["model"]]
    if base.empty or _missing(row.get("peak_memory_mb")):
        raise NotTestable("no peak memory of the method and the full model")
    base = base.iloc[0]
    m = _with_ci(row, "memory_saving_mb", lambda mb: mb / 1024)
    m.detail = (f"{row['model']}: {base['peak_memory_mb']:.0f} MB -> {row['peak_memory_mb']:.0f} MB "
                f"({row.get('memory_method', '?')})")
    return m


@computation
def best_setting_value(tables: Tables, family, series, field_name, metric=None, setting=None) -> Measurement:
    """The value of `field_name` (e.g. alpha) whose runs have the best mean primary score; needs two values at
    least."""
    rows = require(select(tables.summary, family, series, setting), family=family, series=series, setting=setting)
    _check_metric(rows, metric)
    if field_name not in rows or rows[field_name].nunique() < 2:
        values = sorted(rows[field_name].dropna().unique()) if field_name in rows else []
        raise NotTestable(f"the sweep has {len(values)} value(s) of {field_name} "
                          f"({', '.join(map(str, values)) or 'none'}); a comparison needs two at least")
    means = rows.groupby(field_name)["accuracy"].mean()
    return Measurement(float(means.idxmax()),
                       detail=", ".join(f"{field_name} {k}: {100 * v:.1f}" for k, v in means.items()))


@computation
def fastv_formula_error(tables: Tables, family) -> Measurement:
    """FastV's prefill formula (2 x MACs) against the analytic causal LLM-prefill count of the full model,
    in percent, averaged over benchmarks."""
    rows = require(select(tables.summary, family, "full"), family=family, series="full")
    if "mean_fastv_macs" not in rows or rows["mean_fastv_macs"].isna().all():
        raise NotTestable("the summary has no mean_fastv_macs column")
    _flop_column(rows)
    error = 100 * (2 * rows["mean_fastv_macs"] / rows["mean_flops_llm_prefill"] - 1)
    return Measurement(float(error.mean()), detail=f"from {error.min():+.1f}% to {error.max():+.1f}% over "
                                                   f"{len(error)} benchmark(s)")


# --- claims file, verdicts, audit -----------------------------------------------------------------------

def load_claims(path) -> list[dict]:
    """The claims of a claims YAML (a `claims:` list), checked: fields, computations, tests, profiles."""
    document = yaml.safe_load(Path(path).read_text())
    claims = document["claims"] if isinstance(document, dict) else document
    seen = set()
    for claim in claims:
        missing = [f for f in CLAIM_FIELDS if f not in claim]
        where = f"claim {claim.get('id', '?')!r}"
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        if claim["id"] in seen:
            raise ValueError(f"{where}: duplicate id")
        seen.add(claim["id"])
        if claim["computation"] not in COMPUTATIONS:
            raise ValueError(f"{where}: unknown computation {claim['computation']!r}; "
                             f"known: {', '.join(sorted(COMPUTATIONS))}")
        for test in [claim["test"], *(claim.get("profile_test") or {}).values()]:
            kind = test.get("type")
            if kind not in TESTS:
                raise ValueError(f"{where}: unknown test {kind!r}; known: {', '.join(TESTS)}")
            absent = [k for k in TESTS[kind].fields if k not in test]
            if absent:
                raise ValueError(f"{where}: test {kind} needs {', '.join(absent)}")
        unknown = set(claim["profiles"]) - set(PROFILES)
        if unknown:
            raise ValueError(f"{where}: unknown profile(s) {', '.join(sorted(unknown))}")
        needed = claim.get("min_configurations")
        if needed is not None and (not isinstance(needed, int) or isinstance(needed, bool) or needed < 1):
            raise ValueError(f"{where}: min_configurations must be a positive integer, got {needed!r}")
        if set(PROFILES) - set(claim["profiles"]) and not claim.get("not_testable_reason"):
            raise ValueError(f"{where}: needs a not_testable_reason for the profiles it is not testable in")
    return claims


def _number(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _fmt(value, unit="") -> str:
    text = _number(value)
    if text == "n/a":
        return text
    return f"{text}{unit}" if unit in ("x", "%") else f"{text} {unit}".strip()


def format_value(value, low=float("nan"), high=float("nan"), unit="") -> str:
    """'27.4 points [17.7, 39.3]' (value with unit, then the CI); 'n/a' without a value."""
    if not (isinstance(value, (int, float)) and np.isfinite(value)):
        return "n/a"
    ci = f" [{_number(low)}, {_number(high)}]" if np.isfinite(low) and np.isfinite(high) else ""
    return _fmt(value, unit) + ci


@dataclass(frozen=True)
class Test:
    """One kind of test of a claim: the fields its `test:` entry needs, what it needs in words (to follow 'the
    claim needs') and the values that hold: `region` gives (low, high, low_open, high_open) of that range."""
    name: str
    fields: tuple[str, ...]
    describe: Callable[[dict, str], str]
    region: Callable[[dict], tuple[float, float, bool, bool]]

    def holds(self, test: dict, value: float) -> bool:
        low, high, low_open, high_open = self.region(test)
        return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)

    def decide(self, test: dict, low: float, high: float) -> str:
        """The verdict on an interval [low, high]: all of it holds, none of it does, or it straddles an edge."""
        if self.holds(test, low) and self.holds(test, high):
            return REPRODUCED
        start, end, start_open, end_open = self.region(test)
        below = high < start or (start_open and high <= start)
        above = low > end or (end_open and low >= end)
        return NOT_REPRODUCED if below or above else INCONCLUSIVE

    def edges(self, test: dict, low: float, high: float) -> list[float]:
        """The edges of the range that lie inside [low, high]."""
        return [e for e in self.region(test)[:2] if np.isfinite(e) and low <= e <= high]


def _tolerance(test: dict) -> float:
    """at_least, at_most and within take an optional tolerance."""
    return test.get("tolerance", 0)


INF = float("inf")
TESTS = {test.name: test for test in (
    Test("at_least", ("target",), lambda t, unit: f"at least {_fmt(t['target'] - _tolerance(t), unit)}",
         lambda t: (t["target"] - _tolerance(t), INF, False, True)),
    Test("at_most", ("target",), lambda t, unit: f"at most {_fmt(t['target'] + _tolerance(t), unit)}",
         lambda t: (-INF, t["target"] + _tolerance(t), True, False)),
    Test("within", ("target",), lambda t, unit: f"{_number(t['target'])} ± {_fmt(_tolerance(t), unit)}",
         lambda t: (t["target"] - _tolerance(t), t["target"] + _tolerance(t), False, False)),
    Test("between", ("low", "high"), lambda t, unit: f"between {_fmt(t['low'], unit)} and {_fmt(t['high'], unit)}",
         lambda t: (t["low"], t["high"], False, False)),
    Test("greater", ("threshold",), lambda t, unit: f"more than {_fmt(t['threshold'], unit)}",
         lambda t: (t["threshold"], INF, True, True)),
    Test("less", ("threshold",), lambda t, unit: f"less than {_fmt(t['threshold'], unit)}",
         lambda t: (-INF, t["threshold"], True, True)),
    Test("no_worse_than", ("margin",), lambda t, unit: f"no worse than -{_fmt(t['margin'], unit)}",
         lambda t: (-t["margin"], INF, False, True)),
    Test("equivalent", ("margin",), lambda t, unit: f"within ±{_fmt(t['margin'], unit)}",
         lambda t: (-t["margin"], t["margin"], False, False)),
)}


def _kind(test: dict) -> Test:
    if test["type"] not in TESTS:
        raise ValueError(f"unknown test {test['type']!r}")
    return TESTS[test["type"]]


def describe_test(test: dict, unit: str = "") -> str:
    """What a test needs, to follow 'the claim needs'."""
    return _kind(test).describe(test, unit)


def judge(test: dict, m: Measurement, unit: str = "") -> tuple[str, str]:
    """(verdict, reason) of a measurement under a test: on its interval where it has one (reproduced, not
    reproduced, or inconclusive when the interval straddles an edge of what the claim needs), else on the
    point value (reproduced or not reproduced)."""
    kind = _kind(test)
    value, low, high = m.value, m.ci_low, m.ci_high
    has_ci = np.isfinite(low) and np.isfinite(high)
    needs = f"the claim needs {describe_test(test, unit)}" + (f" for the whole {m.interval}" if has_ci else "")
    note = f"; {m.note}" if m.note else ""
    if not np.isfinite(value):
        return NOT_REPRODUCED, f"{m.detail or 'no value could be measured'}; {needs}{note}"
    measured = f"measured {_fmt(value, unit)}" + (f" ({m.interval} {_number(low)} to {_number(high)})" if has_ci
                                                 else "")
    if not has_ci:
        return (REPRODUCED if kind.holds(test, value) else NOT_REPRODUCED), f"{measured}; {needs}{note}"
    verdict = kind.decide(test, low, high)
    if verdict == INCONCLUSIVE:
        edges = " and ".join(_fmt(e, unit) for e in kind.edges(test, low, high))
        point = ("meets the claim, but not significantly" if kind.holds(test, value)
                 else "misses the claim, but not significantly")
        return INCONCLUSIVE, (f"{measured}: the {m.interval} straddles {edges}, so the data cannot decide (the "
                              f"point value {point}); {needs}{note}")
    return verdict, f"{measured}; {needs}{note}"


def _series_named(args: dict) -> set[str]:
    """The series a claim's arguments name (`series`, `a`, `b`: a name, a list, or {series, setting})."""
    names = set()
    for key in ("series", "a", "b"):
        for spec in _as_list(args.get(key)):
            names.add(spec["series"] if isinstance(spec, dict) else spec)
    return names


def _claim_args(claim: dict, profile: str) -> dict:
    return {**(claim.get("args") or {}), **((claim.get("profile_args") or {}).get(profile) or {})}


def is_visor_claim(claim: dict, profile: str) -> bool:
    """A claim about VISOR: its arguments name a VISOR series."""
    return bool(_series_named(_claim_args(claim, profile)) & set(VISOR_SERIES))


def visor_configurations(tables: Tables, family=None) -> int:
    """The most viable configurations (distinct SA-layer counts of VISOR's fixed runs) of one VISOR model."""
    fixed = select(tables.summary, family, "visor_fixed")
    if fixed.empty or "sa_layers" not in fixed:
        return 0
    return int(fixed.groupby("model")["sa_layers"].nunique().max())


def visor_gate(training: pd.DataFrame, gate_points: float = VISOR_GATE_POINTS) -> str:
    """The reason VISOR's claims cannot be judged, or "" when they can: VISOR's quality gate
    (`visor_model.audit.training.quality_gate`) failed for some model and training budget (`training`:
    visor_training.csv; no rows: no gate)."""
    gate = quality_gate(training, gate_points)
    failed = gate[~gate["passed"].astype(bool)]
    if failed.empty:
        return ""
    worst = failed.loc[failed["gap"].idxmax()]
    return (f"VISOR under-trained: its largest configuration is {worst['gap']:.1f} points below its host on "
            f"validation ({worst['model']}, {worst['training']} training budget: {worst['largest'][2:]} SA layers at "
            f"step {int(worst['step'])}, mean over {int(worst['benchmarks'])} benchmark(s); the gate is "
            f"{gate_points:g} points, audit.visor_gate_points)")


def audit_claim(claim: dict, tables: Tables, profile: str, gate_points: float = VISOR_GATE_POINTS) -> dict:
    test = {**claim["test"], **((claim.get("profile_test") or {}).get(profile) or {})}
    unit = claim.get("unit", "")
    row = {"id": claim["id"], "claim": claim["claim"].strip(), "source": claim["source"],
           "provenance": claim.get("provenance", "paper"), "profile": profile,
           "paper_value": str(claim["paper_value"]), "unit": unit, "test": describe_test(test, unit),
           "tolerance": test.get("tolerance", test.get("margin", "")), "reproduced_value": float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan"), "interval": "", "at_half_budget": "",
           "computation": claim["computation"], "detail": ""}
    if profile not in claim["profiles"]:
        return {**row, "verdict": NOT_TESTABLE, "reason": claim["not_testable_reason"].strip()}
    args = _claim_args(claim, profile)
    needed = claim.get("min_configurations")
    available = visor_configurations(tables, args.get("family")) if needed else 0
    if needed and 0 < available < needed:
        return {**row, "verdict": NOT_TESTABLE,
                "reason": f"needs >= {needed} configurations; this checkpoint has {available}"}
    try:
        m = COMPUTATIONS[claim["computation"]](tables, **args)
    except NotTestable as missing:
        return {**row, "verdict": NOT_TESTABLE, "reason": f"{missing} in this run"}
    verdict, reason = judge(test, m, unit)
    gate = visor_gate(tables.training, gate_points) if is_visor_claim(claim, profile) else ""
    if gate:
        verdict, reason = INCONCLUSIVE, f"{gate}; the measurement alone: {verdict}, {reason}"
    if claim.get("provenance") == "unverified":
        reason += " (the claim's source is unverified)"
    has_ci = np.isfinite(m.ci_low) and np.isfinite(m.ci_high)
    return {**row, "reproduced_value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high,
            "interval": m.interval if has_ci else "", "verdict": verdict, "reason": reason, "detail": m.detail}


def audit(claims: list[dict], tables: Tables, profile: str, gate_points: float = VISOR_GATE_POINTS) -> pd.DataFrame:
    """The audit table: every claim judged on the VISOR runs at the full training budget (and the other
    methods' runs); `at_half_budget`: a VISOR claim's verdict on the half-budget VISOR runs, where there are
    any."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    full = tables.variant("full")
    half = tables.variant("half") if "half" in tables.visor_trainings() else None
    rows = []
    for claim in claims:
        row = audit_claim(claim, full, profile, gate_points)
        if half is not None and is_visor_claim(claim, profile):
            row["at_half_budget"] = audit_claim(claim, half, profile, gate_points)["verdict"]
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


# --- the report's summary in words ----------------------------------------------------------------------

PROFILE_WORDS = {
    "offline": "the offline profile (small reference models of the real LLaVA classes, trained here on "
               "synthetic benchmarks): claims about behaviour are tested; checkpoint-specific numbers are not",
    "paper": "the paper profile (the papers' checkpoints on the lmms-eval benchmarks)",
}


def summary_markdown(table: pd.DataFrame) -> str:
    """What held and what did not, in words, from an audit table (results/claims.csv)."""
    if table.empty:
        return "No claims were audited."
    profile = table["profile"].iloc[0]
    counts = table["verdict"].value_counts()
    held, failed = table[table["verdict"] == REPRODUCED], table[table["verdict"] == NOT_REPRODUCED]
    undecided = table[table["verdict"] == INCONCLUSIVE]
    untestable = table[table["verdict"] == NOT_TESTABLE]
    out = [(f"This run audited {len(table)} claims in {PROFILE_WORDS.get(profile, profile)}. "
            f"**{counts.get(REPRODUCED, 0)} reproduced, {counts.get(NOT_REPRODUCED, 0)} not reproduced, "
            f"{counts.get(INCONCLUSIVE, 0)} inconclusive, {counts.get(NOT_TESTABLE, 0)} not testable in this "
            f"profile.**"), ""]

    def bullets(rows):
        return [f"- **{r['claim']}** {r['reason'][0].upper()}{r['reason'][1:]}." for _, r in rows.iterrows()]

    if held.empty and failed.empty and undecided.empty:
        out += ["No claim could be tested with this run's results; the list below says what each one needs.", ""]
    else:
        out += ["**What held:**", ""] + (bullets(held) or ["- none of the tested claims."]) + [""]
        out += ["**What did not hold:**", ""] + (bullets(failed) or ["- none: every decided claim held."]) + [""]
        if len(undecided):
            out += ["**Inconclusive (the data cannot decide):**", ""] + bullets(undecided) + [""]
    missing_runs = untestable[untestable["reason"].str.endswith("in this run")]
    if len(missing_runs):
        out += [f"**Testable in this profile, but not with this run's results** ({len(missing_runs)}):", ""]
        out += [f"- {r['claim']} — {r['reason']}." for _, r in missing_runs.iterrows()] + [""]
    other = len(untestable) - len(missing_runs)
    if other:
        out += [(f"{other} further claims are checkpoint- or hardware-specific, or need more of VISOR's "
                 f"configurations than this checkpoint has; the table below gives each one's reason.")]
    return "\n".join(out)
