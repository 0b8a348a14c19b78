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
of VISOR's family of configurations) on a checkpoint with fewer viable configurations. Column `not_testable`
says which kind: "in this profile" (the profile or the checkpoint cannot test it) or "in this run" (this run's
results lack what the computation needs). Otherwise the test decides. Each test is a range of values that
hold:

  at_least {target, tolerance}   value >= target - tolerance
  at_most {target, tolerance}    value <= target + tolerance
  within {target, tolerance}     |value - target| <= tolerance; with a CI an equivalence test of value - target
                                 that counts the paper's sampling error as well as ours (`rules.tested_interval`)
  between {low, high}            low <= value <= high
  greater {threshold}            value > threshold
  less {threshold}               value < threshold
  no_worse_than {margin}         value >= -margin (non-inferiority)
  equivalent {margin}            -margin <= value <= margin

A measurement with an interval (a 95% CI, or the decision range of the saving-without-loss computations) is
"reproduced" when the whole interval holds, "not reproduced" when none of it does, and "inconclusive" when it
straddles an edge of the range (the reason gives the interval and the edge): the data cannot decide. Without
an interval (latency ratios, FLOP ratios) the point value decides between "reproduced" and "not reproduced".
A computation that yields no value (NaN) measured nothing: "not testable in this profile", kind "in this run",
never "not reproduced". Savings and FLOP ratios are computed on the claim's own benchmarks only (column
`flop_basis`: the FLOP basis of a claim that compares compute).

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

The modules: `selection` (the result tables and which rows a claim reads), `computations` (the registered
computations; `ablations`: the argmax and token-count ones), `rules` (the verdicts and the tests' rules),
`auditing` (the claims file and the audit table), `summary` (the report's summary in words).
"""

from visor_model.audit.claims.auditing import (
    COLUMNS,
    PROFILES,
    audit,
    audit_claim,
    is_visor_claim,
    load_claims,
    visor_configurations,
    visor_gate,
)
from visor_model.audit.claims.computations import COMPUTATIONS, Measurement, computation
from visor_model.audit.claims.rules import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    NOT_TESTABLE_IN_PROFILE,
    NOT_TESTABLE_IN_RUN,
    REPRODUCED,
    TESTS,
    VERDICTS,
    describe_test,
    format_value,
    judge,
)
from visor_model.audit.claims.selection import NotTestable, Tables, read_table, select
from visor_model.audit.claims.summary import summary_markdown

__all__ = [
    "COLUMNS", "COMPUTATIONS", "INCONCLUSIVE", "NOT_REPRODUCED", "NOT_TESTABLE", "NOT_TESTABLE_IN_PROFILE",
    "NOT_TESTABLE_IN_RUN", "PROFILES", "REPRODUCED", "TESTS", "VERDICTS", "Measurement", "NotTestable", "Tables",
    "audit", "audit_claim", "computation", "describe_test", "format_value", "is_visor_claim", "judge", "load_claims",
    "read_table", "select", "summary_markdown", "visor_configurations", "visor_gate",
]
