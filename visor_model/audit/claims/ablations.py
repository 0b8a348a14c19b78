"""Computations of the claims about one method's own choices (registered in `COMPUTATIONS` like the others):
which value of a setting field is best (an argmax, judged with an interval), and whether a method keeps the
number of visual tokens its budget sets, per sample."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from visor_model.audit.analysis import sample_scores, setting_label
from visor_model.audit.claims.computations import Measurement, _at_floor, _check_metric, computation
from visor_model.audit.claims.selection import (
    NotTestable,
    Tables,
    benchmark_selection,
    is_missing,
    matches,
    require,
    select,
)
from visor_model.methods import registry
from visor_model.stats import bootstrap_mean, percentile_interval


def budget_tokens(budget: float, n_tokens: int) -> int:
    """floor(budget x n), at least one: the rule of `visor_model.methods.base.tokens_for_budget` (a module that
    imports torch; the audit does not), which tests/test_claim_verdicts.py checks this against."""
    return max(1, min(n_tokens, math.floor(budget * n_tokens + 1e-9)))


def _value_text(field_name: str, value) -> str:
    return f"{field_name} {'default' if is_missing(value) else value}"


@computation
def best_setting_margin(tables: Tables, family, series, field_name, claimed=None, setting=None, metric=None,
                        cluster=None, kind=None, benchmark=None) -> Measurement:
    """How far the claimed best value of a setting field (`claimed`, e.g. alpha 0.5; None: the field unset, the
    method's default) is ahead of the best of the other values that ran: min over the other values v of the
    paired mean difference claimed - v (points; per benchmark over the documents both runs evaluated, the
    benchmarks weighed equally), runs matched on model, benchmark and every other setting field. Its 95% CI
    is a bootstrap of that minimum, each benchmark's documents resampled once for all the comparisons, so
    the argmax's uncertainty is in the interval: > 0 throughout, the claimed value is significantly the best;
    < 0 throughout, another value is significantly better; across 0, the data cannot tell them apart."""
    selection = benchmark_selection(cluster, kind, benchmark)
    rows = require(select(tables.summary, family, series, setting, **selection), family=family, series=series,
                   setting=setting, **selection)
    _check_metric(rows, metric)
    values = rows[field_name] if field_name in rows else pd.Series(np.nan, index=rows.index)
    is_claimed = np.array([matches(v, claimed) for v in values])
    others = list(dict.fromkeys(v for v, c in zip(values, is_claimed) if not c))
    if not is_claimed.any() or not others:
        seen = ", ".join(dict.fromkeys(_value_text(field_name, v) for v in values))
        raise NotTestable(f"the sweep of {field_name} has {seen}; the claim needs {_value_text(field_name, claimed)}"
                          " and another value at least")
    fields = [f for f in registry.setting_columns() if f != field_name and f in rows]
    diffs: dict = {}  # benchmark -> {other value: per-document difference (Series by doc_id)}
    compared = []
    for _, x in rows[is_claimed].iterrows():
        for other in others:
            same = rows[np.array([matches(v, other) for v in values]) & (rows["model"] == x["model"])
                        & (rows["benchmark"] == x["benchmark"])]
            same = same[[all(matches(y.get(f), x.get(f)) for f in fields) for _, y in same.iterrows()]]
            for _, y in same.iterrows():
                a, b = sample_scores(tables.samples, x), sample_scores(tables.samples, y)
                common = a.index.intersection(b.index)
                if len(common):
                    diffs.setdefault(x["benchmark"], {}).setdefault(str(other), []).append(a[common] - b[common])
                    compared += [x, y]
    labels = [str(v) for v in others]
    complete = {bench: d for bench, d in diffs.items() if set(d) == set(labels)}
    if not complete:
        raise NotTestable(f"no benchmark has per-sample scores of {_value_text(field_name, claimed)} and of every "
                          f"other value of {field_name} on the same documents")
    _at_floor(tables, compared)
    rng = np.random.default_rng(tables.seed)
    points = np.zeros(len(labels))
    stats = np.zeros((len(labels), tables.resamples))
    for bench in sorted(complete):
        mean_per_doc = [pd.concat(complete[bench][label], axis=1).mean(axis=1) for label in labels]
        shared = mean_per_doc[0].index
        for series_ in mean_per_doc[1:]:
            shared = shared.intersection(series_.index)
        matrix = np.vstack([s[shared.sort_values()].to_numpy() for s in mean_per_doc])  # [others, docs]
        index = rng.integers(0, matrix.shape[1], size=(tables.resamples, matrix.shape[1]))
        points += matrix.mean(axis=1) / len(complete)
        stats += matrix[:, index].mean(axis=2) / len(complete)
    low, high = percentile_interval(100 * stats.min(axis=0))
    detail = (f"{_value_text(field_name, claimed)} minus " + ", ".join(
        f"{_value_text(field_name, label)} {100 * p:+.1f}" for label, p in zip(labels, points))
        + f" points (mean over {len(complete)} benchmark(s): {', '.join(sorted(complete))})")
    return Measurement(float(100 * points.min()), low, high, detail)


@computation
def kept_token_deviation(tables: Tables, family, series, setting=None, cluster=None, kind=None,
                         benchmark=None) -> Measurement:
    """How far the visual tokens a token-dropping method keeps per sample are from the fixed number its
    budget sets, in percent: per sample |kept - N| / N with N = floor(budget x the patch tokens the image gives
    the model), at least 1 (newline tokens not counted; `visual_tokens` and `visual_tokens_kept` of the
    per-sample log); the mean over samples per run and benchmark, then over those, with a bootstrap CI over
    samples. 0: every sample keeps exactly its budget. The detail gives, per setting, the mean signed
    shortfall (N - kept) / N and the share of samples at exactly N."""
    selection = benchmark_selection(cluster, kind, benchmark)
    rows = require(select(tables.summary, family, series, setting, **selection), family=family, series=series,
                   setting=setting, **selection)
    samples = tables.samples
    if samples.empty or not {"visual_tokens", "visual_tokens_kept"} <= set(samples):
        raise NotTestable("the per-sample table has no visual_tokens / visual_tokens_kept columns")
    groups, lines = {}, {}
    for _, row in rows.iterrows():
        if is_missing(row.get("budget")):
            raise NotTestable(f"{setting_label(row)} has no budget")
        part = samples[(samples["model"] == row["model"]) & (samples["method"] == row["method"])
                       & (samples["setting_id"] == row["setting_id"]) & (samples["benchmark"] == row["benchmark"])]
        part = part.dropna(subset=["visual_tokens", "visual_tokens_kept"])
        if part.empty:
            continue
        target = np.array([budget_tokens(float(row["budget"]), int(n)) for n in part["visual_tokens"]], float)
        kept = part["visual_tokens_kept"].to_numpy(dtype=float)
        groups[(row["model"], row["setting_id"], row["benchmark"])] = 100 * np.abs(kept - target) / target
        line = lines.setdefault(f"{row['model']} {setting_label(row)}", [[], [], []])
        line[0].extend(100 * (target - kept) / target)
        line[1].extend(kept == target)
        line[2].extend(target)
    if not groups:
        raise NotTestable("the per-sample table has no token counts of these runs")
    value, low, high = bootstrap_mean(groups, tables.resamples, tables.seed)
    detail = "; ".join(f"{label}: mean shortfall {np.mean(short):+.1f}% of a mean budget of {np.mean(target):.0f} "
                       f"tokens, {100 * np.mean(exact):.0f}% of {len(exact)} samples exactly at it"
                       for label, (short, exact, target) in lines.items())
    return Measurement(value, low, high, detail + f" ({len(groups)} runs x benchmarks)")

