"""Statistics shared by the measurements and the audit (efficiency, methods and audit all import them; this
module imports none of them): a missing value, the Pareto frontier of (cost, quality) points, the paired
percentile bootstrap over documents and the distribution-free CI of a median.
"""

from __future__ import annotations

import math

import numpy as np


def is_missing(value) -> bool:
    """None or a float NaN (a blank cell of a table read by pandas)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def pareto_mask(cost, quality) -> np.ndarray:
    """True for the points no other point dominates (at most the cost and at least the quality, one of them
    strictly). NaN points are never on the frontier."""
    cost, quality = np.asarray(cost, dtype=float), np.asarray(quality, dtype=float)
    valid = np.isfinite(cost) & np.isfinite(quality)
    mask = np.zeros(len(cost), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid.copy()
        others[i] = False
        dominated = others & (cost <= cost[i]) & (quality >= quality[i]) & ((cost < cost[i]) | (quality > quality[i]))
        mask[i] = not dominated.any()
    return mask


# --- bootstrap ---------------------------------------------------------------------------------------------

BOOTSTRAP_RESAMPLES = 2000


def bootstrap_distribution(differences: dict, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                           weigh_groups_equally: bool = False) -> tuple[float, np.ndarray]:
    """The mean paired difference and its bootstrap distribution (an array of `resamples` values).

    `differences` maps a group (a benchmark) to an array (comparisons x documents) of per-document
    differences, every row aligned on the same documents. The statistic is the mean over all comparisons of
    their mean difference (`weigh_groups_equally`: the mean over groups of each group's mean over its
    comparisons, so a benchmark counts once however many comparisons it holds); each resample draws the
    documents of every group with replacement, once for all comparisons of that group (so comparisons on the
    same documents stay paired)."""
    groups = {g: np.atleast_2d(np.asarray(d, dtype=float)) for g, d in differences.items() if np.size(d)}
    if not groups:
        return float("nan"), np.full(resamples, np.nan)
    weights = ({g: 1 / (len(groups) * d.shape[0]) for g, d in groups.items()} if weigh_groups_equally
               else {g: 1 / sum(d.shape[0] for d in groups.values()) for g in groups})
    point = sum(weights[g] * d.mean(axis=1).sum() for g, d in groups.items())
    rng = np.random.default_rng(seed)
    stats = np.zeros(resamples)
    for group in sorted(groups, key=str):
        d = groups[group]
        index = rng.integers(0, d.shape[1], size=(resamples, d.shape[1]))
        stats += weights[group] * d[:, index].mean(axis=2).sum(axis=0)
    return float(point), stats


def percentile_interval(stats: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    if not np.isfinite(stats).all():
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def paired_bootstrap(differences: dict, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean paired difference and its percentile bootstrap interval (see `bootstrap_distribution`)."""
    point, stats = bootstrap_distribution(differences, resamples, seed)
    return (point, *percentile_interval(stats, level))


def bootstrap_mean(groups: dict, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean over groups of each group's mean, with a bootstrap interval resampling within every group."""
    return paired_bootstrap({g: np.asarray(v, dtype=float)[None, :] for g, v in groups.items()}, resamples,
                            seed, level)


def median_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """The median of repeated measurements and a distribution-free CI for it: the order statistics x_(k) and
    x_(n+1-k) with the largest k such that P(Binomial(n, 1/2) <= k - 1) <= (1 - level) / 2 (the sign test's
    interval; it covers the median with probability >= level whatever the distribution). NaN ends where n is too
    small for any such k (n < 6 at 95%); NaN throughout when a value is missing or not finite.

    The latency repeats use it (`visor_model.audit.tables.latency_table`): few (5-20) values, where a bootstrap
    would undercover, from a machine whose load can spike in one repeat, which moves a mean but not a median."""
    x = np.sort(np.asarray(values, dtype=float))
    nan = float("nan")
    if x.size == 0 or not np.isfinite(x).all():
        return nan, nan, nan
    n, tail = x.size, (1 - level) / 2
    k, below = 0, 0.0  # below: P(Binomial(n, 1/2) <= k - 1)
    while k < n and below + math.comb(n, k) / 2**n <= tail:
        below += math.comb(n, k) / 2**n
        k += 1
    median = float(np.median(x))
    return (median, nan, nan) if k == 0 else (median, float(x[k - 1]), float(x[n - k]))
