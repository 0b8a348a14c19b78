"""Which rows a claim reads: the result tables (`Tables`), the summary rows of a family, series, setting and
benchmark selection (`select`), and `NotTestable`, raised where the runs a computation needs are missing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from visor_model.audit import analysis
from visor_model.audit.analysis import add_series
from visor_model.stats import BOOTSTRAP_RESAMPLES, is_missing


class NotTestable(Exception):
    """The runs a computation needs are not in the results (the message says which)."""


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
    resamples: int = BOOTSTRAP_RESAMPLES

    @classmethod
    def read(cls, summary, samples, latency=None, training=None, seed: int = 0,
             resamples: int = BOOTSTRAP_RESAMPLES):
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




def as_list(value):
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def matches(value, wanted) -> bool:
    if is_missing(wanted):
        return is_missing(value)
    if is_missing(value):
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
        table = table[table["family"].isin(as_list(family))]
    if model is not None:
        table = table[table["model"].isin(as_list(model))]
    if series is not None:
        table = table[table["series"].isin(as_list(series))]
    if cluster is not None:
        table = table[table["cluster"].isin(as_list(cluster))] if "cluster" in table else table[:0]
    if kind is not None:
        table = table[table["kind"].isin(as_list(kind))] if "kind" in table else table[:0]
    if benchmark is not None:
        table = table[table["benchmark"].isin(as_list(benchmark))]
    for key, wanted in (setting or {}).items():
        if key not in table:
            table = table[:0] if wanted is not None else table
            continue
        if key == "sa_layers" and isinstance(wanted, str):
            parts = []
            for _, part in table.groupby("model"):
                available = sorted(int(v) for v in part["sa_layers"].dropna().unique())
                resolved = _resolve_sa(wanted, available)
                parts.append(part[[matches(v, resolved) for v in part["sa_layers"]]] if resolved is not None
                             else part[:0])
            table = pd.concat(parts) if parts else table[:0]
            continue
        table = table[[matches(v, wanted) for v in table[key]]]
    return table


def describe_selection(family=None, series=None, setting=None, cluster=None, kind=None, benchmark=None) -> str:
    what = " or ".join(analysis.SERIES_LABELS.get(s, s) for s in as_list(series)) or "any method"
    if setting:
        what += f" ({', '.join(f'{k} {v}' for k, v in setting.items())})"
    where = []
    if family:
        where.append(f"a {family} model")
    for name, value in (("cluster", cluster), ("kind", kind), ("benchmark", benchmark)):
        if value is not None:
            where.append(f"{name} {'/'.join(map(str, as_list(value)))}")
    return what + (" on " + ", ".join(where) if where else "")


def require(rows: pd.DataFrame, **selection) -> pd.DataFrame:
    if rows.empty:
        raise NotTestable(f"the results have no run of {describe_selection(**selection)}")
    return rows


def require_flops(summary: pd.DataFrame, column: str = "mean_flops_llm_prefill") -> None:
    if column not in summary or summary[column].isna().all():
        raise NotTestable(f"the results have no {column} column (FLOP accounting missing)")


def run_spec(spec) -> dict:
    """A run spec of a claim: a series name (or a list of them), or {series, setting}."""
    if isinstance(spec, (str, list, tuple)):
        return {"series": spec, "setting": {}}
    return {"series": spec["series"], "setting": dict(spec.get("setting") or {})}


def benchmark_selection(cluster=None, kind=None, benchmark=None) -> dict:
    """The benchmark selection of a computation's arguments, the unset ones left out."""
    return {key: value for key, value in (("cluster", cluster), ("kind", kind), ("benchmark", benchmark))
            if value is not None}


