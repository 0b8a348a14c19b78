"""The audit table: the claims file loaded and checked (`load_claims`), each claim measured by its computation
and judged by its rule (`audit_claim`), VISOR's claims gated on its training (`visor_gate`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from visor_model.audit.claims import ablations  # noqa: F401 (registers its computations)
from visor_model.audit.claims.computations import COMPUTATIONS, FLOP_BASES
from visor_model.audit.claims.rules import (
    INCONCLUSIVE,
    NOT_TESTABLE,
    NOT_TESTABLE_IN_PROFILE,
    NOT_TESTABLE_IN_RUN,
    TESTS,
    describe_test,
    judge,
    tested_interval,
)
from visor_model.audit.claims.selection import NotTestable, Tables, as_list, select
from visor_model.audit.training import GATE_POINTS as VISOR_GATE_POINTS  # the default of audit.visor_gate_points
from visor_model.audit.training import quality_gate

PROFILES = ("offline", "paper")
PROVENANCES = ("paper", "secondary", "unsure", "unverified", "literature", "audit")
# what a `provenance: paper` claim's source must name: the paper's table, figure or section that states it
PAPER_PLACES = ("table", "figure", "section", "abstract")
CLAIM_FIELDS = ("id", "claim", "source", "paper_value", "unit", "profiles", "computation", "test")
COLUMNS = ["id", "claim", "source", "provenance", "profile", "paper_value", "unit", "test", "tolerance",
           "reproduced_value", "ci_low", "ci_high", "interval", "verdict", "at_half_budget", "reason",
           "computation", "detail", "not_testable", "flop_basis"]
# The FLOP basis of the claims that compare compute: a saving's (`args.flops`, default LLM prefill only), or
# the FLOPs two methods are matched at (LLM prefill).
SAVING_COMPUTATIONS = ("max_saving_at_accuracy", "extra_saving_without_loss", "cluster_average_at_saving",
                       "paired_gap_at_matched_flops")
VISOR_SERIES = ("visor_fixed", "visor_policy", "visor_tr")


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
        provenance = claim.get("provenance", "paper")
        if provenance not in PROVENANCES:
            raise ValueError(f"{where}: unknown provenance {provenance!r}; known: {', '.join(PROVENANCES)}")
        if provenance == "paper" and not any(place in claim["source"].lower() for place in PAPER_PLACES):
            raise ValueError(f"{where}: a provenance: paper claim's source must name the paper's table, figure or "
                             f"section ({', '.join(PAPER_PLACES)}); a number known only second-hand is secondary")
        unknown = set(claim["profiles"]) - set(PROFILES)
        if unknown:
            raise ValueError(f"{where}: unknown profile(s) {', '.join(sorted(unknown))}")
        needed = claim.get("min_configurations")
        if needed is not None and (not isinstance(needed, int) or isinstance(needed, bool) or needed < 1):
            raise ValueError(f"{where}: min_configurations must be a positive integer, got {needed!r}")
        if set(PROFILES) - set(claim["profiles"]) and not claim.get("not_testable_reason"):
            raise ValueError(f"{where}: needs a not_testable_reason for the profiles it is not testable in")
    return claims



def _series_named(args: dict) -> set[str]:
    """The series a claim's arguments name (`series`, `a`, `b`: a name, a list, or {series, setting})."""
    names = set()
    for key in ("series", "a", "b"):
        for spec in as_list(args.get(key)):
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


def flop_basis(claim: dict, profile: str) -> str:
    """The FLOP basis of a claim that compares compute (`SAVING_COMPUTATIONS`), "" for the others."""
    args = _claim_args(claim, profile)
    if claim["computation"] not in SAVING_COMPUTATIONS or (claim["computation"] == "cluster_average_at_saving"
                                                            and args.get("saving") is None):
        return ""
    return FLOP_BASES[args.get("flops", "llm_prefill")]


def audit_claim(claim: dict, tables: Tables, profile: str, gate_points: float = VISOR_GATE_POINTS) -> dict:
    """One row of the audit table (`COLUMNS`): the claim measured and judged in `profile`."""
    test = {**claim["test"], **((claim.get("profile_test") or {}).get(profile) or {})}
    unit = claim.get("unit", "")
    row = {"id": claim["id"], "claim": claim["claim"].strip(), "source": claim["source"],
           "provenance": claim.get("provenance", "paper"), "profile": profile,
           "paper_value": str(claim["paper_value"]), "unit": unit, "test": describe_test(test, unit),
           "tolerance": test.get("tolerance", test.get("margin", "")), "reproduced_value": float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan"), "interval": "", "at_half_budget": "",
           "computation": claim["computation"], "detail": "", "not_testable": "",
           "flop_basis": flop_basis(claim, profile)}
    if profile not in claim["profiles"]:
        return {**row, "verdict": NOT_TESTABLE, "not_testable": NOT_TESTABLE_IN_PROFILE,
                "reason": claim["not_testable_reason"].strip()}
    args = _claim_args(claim, profile)
    needed = claim.get("min_configurations")
    available = visor_configurations(tables, args.get("family")) if needed else 0
    if needed and 0 < available < needed:
        return {**row, "verdict": NOT_TESTABLE, "not_testable": NOT_TESTABLE_IN_PROFILE,
                "reason": f"needs >= {needed} configurations; this checkpoint has {available}"}
    try:
        m = COMPUTATIONS[claim["computation"]](tables, **args)
    except NotTestable as missing:
        return {**row, "verdict": NOT_TESTABLE, "not_testable": NOT_TESTABLE_IN_RUN,
                "reason": f"{missing} {NOT_TESTABLE_IN_RUN}"}
    verdict, reason = judge(test, m, unit)
    if verdict == NOT_TESTABLE:  # no value: nothing was measured
        return {**row, "verdict": verdict, "not_testable": NOT_TESTABLE_IN_RUN, "reason": reason,
                "detail": m.detail}
    m = tested_interval(test, m)
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


