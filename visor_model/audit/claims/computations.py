"""The registered computations (`COMPUTATIONS`): each measures one claim's value over the result tables, named
by the claim's `computation` and called with its `args`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from visor_model.audit import analysis
from visor_model.audit.analysis import paired_difference, sample_scores, setting_label
from visor_model.audit.claims.selection import (
    NotTestable,
    Tables,
    as_list,
    benchmark_selection,
    describe_selection,
    matches,
    require,
    require_flops,
    run_spec,
    select,
)
from visor_model.stats import bootstrap_distribution, bootstrap_mean, is_missing, percentile_interval


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
    if "metric_value" not in rows or is_missing(row["metric_value"]):
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
        _, low, high = bootstrap_mean(groups, tables.resamples, tables.seed)
        return Measurement(value, 100 * low, 100 * high)
    return Measurement(value)


FLOP_BASES = {"llm_prefill": "LLM prefill only", "prefill_with_vision": "prefill with the vision tower"}
VISION_TERMS = tuple(f"mean_flops_{t}" for t in ("vision", "projector", "selection", "llm_prefill"))


def _flop_ratios(rows: pd.DataFrame, flops: str, full: pd.DataFrame | None) -> pd.Series:
    """Per benchmark (index) one setting's FLOPs relative to the full model's on the same model and benchmark:
    llm_prefill (the papers' convention: the summary's llm_prefill_ratio) or prefill_with_vision (vision tower,
    projector, selection and LLM prefill summed; `full`: the full model's rows)."""
    if flops not in FLOP_BASES:
        raise ValueError(f"flops must be one of {', '.join(FLOP_BASES)}, got {flops!r}")
    if flops == "llm_prefill":
        return rows.set_index("benchmark")["llm_prefill_ratio"].astype(float)
    if full is None or any(t not in rows or t not in full for t in VISION_TERMS):
        return pd.Series(np.nan, index=rows["benchmark"])
    base = full.set_index("benchmark")[list(VISION_TERMS)].fillna(0).sum(axis=1)
    own = rows.set_index("benchmark")[list(VISION_TERMS)].fillna(0).sum(axis=1)
    return own / base.reindex(own.index)


def group_mean(values: pd.Series, rows: pd.DataFrame, groups: list) -> float:
    """The mean over the claim's `groups` ((column, value): a cluster, or a benchmark) of the mean of `values`
    (indexed by benchmark) over that group's benchmarks in `rows`; NaN when a group has no value. Benchmarks
    outside every group never count."""
    means = []
    for column, value in groups:
        benchmarks = rows.loc[rows[column] == value, "benchmark"] if column in rows else pd.Series(dtype=str)
        part = values.reindex(pd.unique(benchmarks)).astype(float)
        part = part[np.isfinite(part)]
        if part.empty:
            return float("nan")
        means.append(part.mean())
    return float(np.mean(means)) if means else float("nan")


def _saving(rows: pd.DataFrame, groups: list, flops: str = "llm_prefill", full: pd.DataFrame | None = None) -> float:
    """FLOP saving of one setting on the claim's own benchmarks: per benchmark its FLOPs relative to the full
    model's (`_flop_ratios`), averaged within each group and then over the groups (`group_mean`): saving =
    1 / that mean ratio. A policy's FLOPs differ per sample and benchmark; only the claim's benchmarks count."""
    ratio = group_mean(_flop_ratios(rows, flops, full), rows, groups)
    return 1 / ratio if np.isfinite(ratio) and ratio > 0 else float("nan")


@dataclass
class _Candidate:
    """One setting tried by a saving-without-loss computation: its summary rows (one per benchmark), the rows
    of the reference it must not lose against (same model) and its FLOP saving over that reference."""
    label: str
    rows: pd.DataFrame
    reference: pd.DataFrame
    saving: float
    other: str = ""  # the saving on the other FLOP basis, shown beside it


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
        lines.append(f"{candidate.label}: {candidate.saving:.2f}x{candidate.other}, "
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
    return ([("benchmark", b) for b in as_list(benchmark)] if benchmark
            else [("cluster", c) for c in as_list(cluster)])


@computation
def max_saving_at_accuracy(tables: Tables, family, series, margin=1.0, cluster=("easy", "hard"), benchmark=None,
                           metric=None, flops="llm_prefill") -> Measurement:
    """The largest FLOP saving over the full model among the settings of `series` (fixed configurations,
    policies, ...) that lose no more than `margin` points on every cluster (or on each `benchmark`), judged
    as a paired non-inferiority test of every setting tried with a Bonferroni correction for their number
    (`_savings_without_loss`). Savings are on the claim's own benchmarks only (`_saving`). flops: the basis
    of the saving judged, llm_prefill (the papers' convention) or prefill_with_vision (vision tower,
    projector and selection counted too); the detail gives each setting's saving on the other basis too."""
    require_flops(tables.summary)
    groups = _cluster_groups(cluster, benchmark)
    other = next(b for b in FLOP_BASES if b != flops)
    full_rows = select(tables.summary, family, "full")
    candidates = []
    for model, full in full_rows.groupby("model"):
        _check_metric(pd.concat([full[full[column] == value] for column, value in groups]), metric)
        for _, rows in select(tables.summary, family, series, model=model).groupby("setting_id"):
            candidates.append(_Candidate(f"{model} {setting_label(rows.iloc[0])}", rows, full,
                                         _saving(rows, groups, flops, full),
                                         f" ({FLOP_BASES[other]}: {_saving(rows, groups, other, full):.2f}x)"))
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
    settings (1 / the mean of FLOPs(a) / FLOPs(b) over the claim's benchmarks, per group then over the groups
    as `_saving`), counted only for the settings of `a`
    that lose no more than `margin` points against their `b` partner on every cluster (or `benchmark`): the
    largest such saving, judged as a paired non-inferiority test of every matched pair with a Bonferroni
    correction (`_savings_without_loss`). A saving bought with accuracy does not count."""
    require_flops(tables.summary)
    groups = _cluster_groups(cluster, benchmark)
    pairs = _pairs(tables, family, a, b, list(match_on), {})
    candidates = {}
    for x, y in pairs:
        candidates.setdefault((x["model"], x["setting_id"], y["setting_id"]), []).append((x, y))
    built = []
    for (model, _, _), matched in candidates.items():
        mine, theirs = pd.DataFrame([x for x, _ in matched]), pd.DataFrame([y for _, y in matched])
        ratios = pd.Series([float(x["mean_flops_llm_prefill"]) / float(y["mean_flops_llm_prefill"])
                            for x, y in matched], index=mine["benchmark"].to_numpy())
        ratio = group_mean(ratios.groupby(level=0).mean(), mine, groups)
        built.append(_Candidate(f"{model} {setting_label(matched[0][0])} vs {setting_label(matched[0][1])}",
                                mine, theirs, 1 / ratio if np.isfinite(ratio) and ratio > 0 else float("nan")))
    _at_floor(tables, [row for pair in pairs for row in pair])
    return _savings_without_loss(tables, built, groups, margin,
                                 f"{describe_selection(None, b)} at the same {', '.join(match_on)}")


@computation
def cluster_average_at_saving(tables: Tables, family, series, cluster=None, benchmark=None, saving=None,
                              metric=None) -> Measurement:
    """The mean primary score (points) over a cluster's benchmarks (or the named ones) of the setting of
    `series` whose LLM-prefill FLOP saving on those same benchmarks is nearest to `saving` (the paper's
    operating point; any setting of the full model). Each benchmark counts with its own metric (OCRBench's
    0-1000 score as its correct share in points)."""
    where = {"cluster": cluster, "benchmark": benchmark}
    rows = require(select(tables.summary, family, series, **where), family=family, series=series, **where)
    choice = None
    if saving is not None:
        require_flops(tables.summary)
        groups = _cluster_groups(cluster, benchmark)
        options = [(abs(math.log(s / saving)), setting_id, s) for setting_id, part in
                   select(tables.summary, family, series).groupby("setting_id")
                   if np.isfinite(s := _saving(part, groups))]
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
    a, b = run_spec(a), run_spec(b)
    a_rows = require(select(tables.summary, family, a["series"], a["setting"], **benchmarks), family=family,
                     **a, **benchmarks)
    b_rows = require(select(tables.summary, family, b["series"], b["setting"], **benchmarks), family=family,
                     **b, **benchmarks)
    pairs = []
    for _, x in a_rows.iterrows():
        same = b_rows[(b_rows["model"] == x["model"]) & (b_rows["benchmark"] == x["benchmark"])]
        for key in match_on:
            same = same[[matches(v, x.get(key)) for v in same[key]]] if key in same else same[:0]
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
    pairs = _pairs(tables, family, a, b, list(match_on), benchmark_selection(cluster, kind, benchmark))
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
        stats.append(bootstrap_distribution(aligned, tables.resamples, tables.seed + k))
        details.append(f"{value}: {100 * stats[-1][0]:+.1f}")
    point = 100 * (stats[0][0] - stats[1][0])
    spread = 100 * (stats[0][1] - stats[1][1])
    return Measurement(point, *percentile_interval(spread),
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
    all its settings (`visor_model.stats.bootstrap_distribution`), so the correlation between settings evaluated on the
    same documents is carried into the interval and one interval is judged: no multiplicity correction is
    needed. The detail gives every setting's own gap."""
    require_flops(tables.summary)
    benchmarks = benchmark_selection(cluster, kind, benchmark)
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
    point, stats = bootstrap_distribution(matrices, tables.resamples, tables.seed,
                                                   weigh_groups_equally=True)
    low, high = percentile_interval(stats)
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
        means.append(bootstrap_distribution(groups, tables.resamples, tables.seed + k))
        details.append(f"{value} {means[-1][0]:.2f}")
    spread = means[0][1] - means[1][1]
    return Measurement(means[0][0] - means[1][0], *percentile_interval(spread),
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
    if column not in row or is_missing(row[column]):
        raise NotTestable(f"the latency table has no {column} (no full-model latency of {row['model']}?)")
    low, high = (row.get(f"{column}_{end}", float("nan")) for end in ("ci_low", "ci_high"))
    low, high = (float("nan") if is_missing(v) else float(transform(v)) for v in (low, high))
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
    if is_missing(row.get("prefill_speedup")) or is_missing(row.get("decode_speedup")):
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
    if base.empty or is_missing(row.get("peak_memory_mb")):
        raise NotTestable("no peak memory of the method and the full model")
    base = base.iloc[0]
    m = _with_ci(row, "memory_saving_mb", lambda mb: mb / 1024)
    m.detail = (f"{row['model']}: {base['peak_memory_mb']:.0f} MB -> {row['peak_memory_mb']:.0f} MB "
                f"({row.get('memory_method', '?')})")
    return m


@computation
def fastv_formula_error(tables: Tables, family) -> Measurement:
    """FastV's prefill formula (2 x MACs) against the analytic causal LLM-prefill count of the full model,
    in percent, averaged over benchmarks."""
    rows = require(select(tables.summary, family, "full"), family=family, series="full")
    if "mean_fastv_macs" not in rows or rows["mean_fastv_macs"].isna().all():
        raise NotTestable("the summary has no mean_fastv_macs column")
    require_flops(rows)
    error = 100 * (2 * rows["mean_fastv_macs"] / rows["mean_flops_llm_prefill"] - 1)
    return Measurement(float(error.mean()), detail=f"from {error.min():+.1f}% to {error.max():+.1f}% over "
                                                   f"{len(error)} benchmark(s)")


