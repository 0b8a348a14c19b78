"""The report's summary of an audit table in words."""

from __future__ import annotations

import pandas as pd

from visor_model.audit.claims.rules import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    NOT_TESTABLE_IN_RUN,
    REPRODUCED,
)

PROFILE_WORDS = {
    "offline": "the offline profile (small reference models of the real LLaVA classes, trained here on "
               "synthetic benchmarks): claims about behaviour are tested; checkpoint-specific numbers are not",
    "paper": "the paper profile (the papers' checkpoints on the lmms-eval benchmarks)",
}


def summary_markdown(table: pd.DataFrame) -> str:
    """What held and what did not, in words, from an audit table (results/claims.csv)."""
    if table.empty:
        return "No claims were audited."
    if "not_testable" not in table:
        raise ValueError("the audit table has no not_testable column (written by an older audit): rerun the "
                         "audit_claims rule")
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
    missing_runs = untestable[untestable["not_testable"] == NOT_TESTABLE_IN_RUN]
    if len(missing_runs):
        out += [f"**Testable in this profile, but not with this run's results** ({len(missing_runs)}):", ""]
        out += [f"- {r['claim']} — {r['reason']}." for _, r in missing_runs.iterrows()] + [""]
    other = len(untestable) - len(missing_runs)
    if other:
        out += [(f"{other} further claims are checkpoint- or hardware-specific, or need more of VISOR's "
                 f"configurations than this checkpoint has; the table below gives each one's reason.")]
    return "\n".join(out)
