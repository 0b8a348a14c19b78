"""The claims audit's verdict rules (visor_model.audit.claims): inconclusive where the CI straddles what a claim
needs, comparisons at matched FLOPs on the competitor's interpolated curve (never extrapolated), saving without
loss as a Bonferroni-corrected paired non-inferiority test, VISOR-TR's extra saving at no loss, claims that need
three VISOR configurations, VISOR's quality gate and the half-training-budget verdicts. Each rule is shown
failing on fake tables (tests/fake_results.py) built to break it."""

from __future__ import annotations

from pathlib import Path

import fake_results
import numpy as np
import pandas as pd
import pytest
import yaml

from visor_model import stats
from visor_model.audit import analysis, claims
from visor_model.audit.claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    NOT_TESTABLE_IN_PROFILE,
    NOT_TESTABLE_IN_RUN,
    REPRODUCED,
    Tables,
    audit,
)

REPO = Path(__file__).resolve().parent.parent
CLAIMS = {claim["id"]: claim for claim in claims.load_claims(REPO / "config" / "claims.yaml")}
RESAMPLES = 300


@pytest.fixture(scope="module")
def fake():
    return fake_results.tables(n=60)


def tables_of(summary, samples, latency=None, training=None) -> Tables:
    return Tables(summary, samples, pd.DataFrame() if latency is None else latency,
                  pd.DataFrame() if training is None else training, resamples=RESAMPLES)


def run(claim_id: str, tables: Tables, **kwargs) -> dict:
    return claims.audit_claim(CLAIMS[claim_id], tables, "offline", **kwargs)


def set_scores(samples: pd.DataFrame, score: float, setting_prefix: str, benchmark: str = "synth_marker",
               method: str = "visor") -> pd.DataFrame:
    samples = samples.copy()
    rows = ((samples["method"] == method) & samples["setting_id"].str.startswith(setting_prefix)
            & (samples["benchmark"] == benchmark))
    samples.loc[rows, "score"] = score
    return samples


# --- inconclusive --------------------------------------------------------------------------------------------

def test_an_interval_straddling_the_edge_is_inconclusive_and_the_reason_gives_it():
    verdict, reason = claims.judge({"type": "no_worse_than", "margin": 1.0},
                                   claims.Measurement(-0.4, -1.7, 0.9), "points")
    assert verdict == INCONCLUSIVE
    assert reason.startswith("measured -0.40 points (95% CI -1.70 to 0.90): the 95% CI straddles -1.00 points, "
                             "so the data cannot decide (the point value meets the claim, but not significantly)")
    # every kind of test: inside -> reproduced, outside -> not reproduced, across an edge -> inconclusive
    for test, inside, outside, across in [
        # within: an equivalence test, the interval widened by the paper's own sampling error (rules.tested_interval)
        ({"type": "within", "target": 60.8, "tolerance": 2.0}, (60.3, 61.3), (64, 66), (61, 63.5)),
        ({"type": "at_least", "target": 8.6, "tolerance": 1.0}, (7.7, 9), (5, 7.5), (7, 9)),
        ({"type": "at_most", "target": 2.0, "tolerance": 0.5}, (1, 2.5), (2.6, 3), (2, 3)),
        ({"type": "between", "low": -14, "high": 19}, (-10, 10), (20, 25), (15, 25)),
        ({"type": "greater", "threshold": 0}, (0.1, 3), (-3, 0), (-1, 3)),
        ({"type": "less", "threshold": 0}, (-3, -0.1), (0, 2), (-1, 1)),
        ({"type": "equivalent", "margin": 1.0}, (-0.9, 0.9), (1.1, 2), (0.5, 1.5)),
    ]:
        for (low, high), expected in ((inside, REPRODUCED), (outside, NOT_REPRODUCED), (across, INCONCLUSIVE)):
            m = claims.Measurement((low + high) / 2, low, high)
            assert claims.judge(test, m)[0] == expected, (test, low, high)


def test_the_report_counts_and_colours_inconclusive(fake):
    from visor_model.reporting.notebook import VERDICT_COLOURS

    table = audit(list(CLAIMS.values()), tables_of(*fake), "offline")
    assert INCONCLUSIVE in set(table["verdict"])  # hired_code_matches_paper's CI reaches -1 on the fake tables
    text = claims.summary_markdown(table)
    assert f"{(table['verdict'] == INCONCLUSIVE).sum()} inconclusive" in text
    assert "**Inconclusive (the data cannot decide):**" in text
    assert set(VERDICT_COLOURS) == set(claims.VERDICTS) and len(set(VERDICT_COLOURS.values())) == 4


# --- matched FLOPs -------------------------------------------------------------------------------------------

def curve(*flops):
    return pd.DataFrame({"setting_id": [f"s{i}" for i in range(len(flops))], "mean_flops_llm_prefill": flops})


def test_curve_partners_interpolate_inside_the_curve_and_never_extrapolate():
    points = curve(4.0, 1.0, 2.0)  # unsorted
    weights = {row["setting_id"]: w for row, w in analysis.curve_partners(points, 3.0)}
    assert weights == {"s2": pytest.approx(0.5), "s0": pytest.approx(0.5)}
    weights = {row["setting_id"]: w for row, w in analysis.curve_partners(points, 1.25)}
    assert weights == {"s1": pytest.approx(0.75), "s2": pytest.approx(0.25)}
    assert [(row["setting_id"], w) for row, w in analysis.curve_partners(points, 2.0)] == [("s2", 1.0)]
    assert analysis.curve_partners(points, 0.5) == []  # cheaper than the competitor's cheapest: no partner
    assert analysis.curve_partners(points, 5.0) == []  # dearer than its dearest: no partner either
    tied = {row["setting_id"]: w for row, w in analysis.curve_partners(curve(1.0, 2.0, 2.0), 1.5)}
    assert tied == {"s0": pytest.approx(0.5), "s1": pytest.approx(0.25), "s2": pytest.approx(0.25)}


def test_interpolated_difference_mixes_the_bracketing_settings_per_document():
    key = {"model": "m", "method": "x", "benchmark": "b"}
    samples = pd.DataFrame([{**key, "setting_id": s, "doc_id": d, "score": v}
                            for s, scores in (("a", [1, 1, 0, 0]), ("lo", [0, 1, 0, 1]), ("hi", [1, 1, 1, 0]))
                            for d, v in enumerate(scores)])
    rows = {s: {**key, "setting_id": s} for s in ("a", "lo", "hi")}
    diff = analysis.interpolated_difference(samples, rows["a"], [(rows["lo"], 0.25), (rows["hi"], 0.75)])
    expected = np.array([1, 1, 0, 0]) - (0.25 * np.array([0, 1, 0, 1]) + 0.75 * np.array([1, 1, 1, 0]))
    assert diff.to_numpy() == pytest.approx(expected)


def test_pooling_settings_on_the_same_documents_does_not_narrow_the_interval():
    """The pooled bootstrap resamples a benchmark's documents once for all its settings: two identical
    settings carry no more information than one, so the interval is the same."""
    rng = np.random.default_rng(0)
    d = rng.choice([-1.0, 0.0, 1.0], size=80)
    one = stats.bootstrap_distribution({"b": d[None, :]}, 500, 0, weigh_groups_equally=True)
    two = stats.bootstrap_distribution({"b": np.vstack([d, d])}, 500, 0, weigh_groups_equally=True)
    assert one[0] == pytest.approx(two[0]) and np.allclose(one[1], two[1])
    # benchmarks count once each, however many settings they pool
    point, _ = stats.bootstrap_distribution({"a": np.ones((3, 10)), "b": np.zeros((1, 10))}, 50, 0,
                                               weigh_groups_equally=True)
    assert point == pytest.approx(0.5)


def test_matched_flops_compares_with_the_interpolated_curve_and_leaves_out_what_it_cannot_partner(fake):
    row = run("visor_beats_hired_hard", tables_of(*fake))
    assert row["verdict"] == REPRODUCED
    # the fake HiRED's cheapest setting costs 0.21 of the full model, VISOR's smallest configuration 0.1
    assert "3 outside its FLOP range, not counted (SA layers 0 on synth_marker" in row["detail"]
    assert "SA layers 1 on synth_marker vs 0.81 x budget 0.1 + 0.19 x budget 0.2" in row["detail"]


def test_matched_flops_fails_when_the_method_is_worse_than_the_competitor_curve(fake):
    summary, samples, _ = fake
    row = run("visor_beats_hired_hard", tables_of(summary, set_scores(samples, 0.0, "")))
    assert row["verdict"] == NOT_REPRODUCED and row["ci_high"] < 0


def test_matched_flops_never_gives_the_competitor_more_compute(fake):
    summary, samples, _ = fake
    summary = summary.copy()
    hired_ov = (summary["method"] == "hired") & (summary["model"] == "reference_ov")
    summary.loc[hired_ov, "mean_flops_llm_prefill"] *= 10  # every HiRED setting dearer than every VISOR one
    row = run("visor_beats_hired_hard", tables_of(summary, samples))
    assert row["verdict"] == NOT_TESTABLE and "never extrapolated" in row["reason"]


# --- saving without loss -------------------------------------------------------------------------------------

def test_saving_without_loss_is_a_corrected_non_inferiority_test(fake):
    row = run("visor_saving_without_loss", tables_of(*fake))
    assert row["verdict"] == REPRODUCED
    # 3 fixed configurations + 5 thresholds tried; the largest configuration matches the full model exactly
    assert "8 settings tried" in row["reason"] and "Bonferroni-corrected 99.38% level (0.05/8)" in row["reason"]
    assert row["reproduced_value"] == pytest.approx(row["ci_low"])
    line = next(part for part in row["detail"].split("; ") if "SA layers 2:" in part)
    assert line.startswith("reference_ov SA layers 2: 2.86x (prefill with the vision tower: ")  # both bases
    assert line.endswith("x), easy +0.0 [+0.0, +0.0], hard +0.0 [+0.0, +0.0] (qualifies)")


def test_saving_without_loss_fails_when_every_setting_loses(fake):
    summary, samples, _ = fake
    row = run("visor_saving_without_loss", tables_of(summary, set_scores(samples, 0.0, "")))
    assert row["verdict"] == NOT_REPRODUCED
    assert (row["reproduced_value"], row["ci_low"], row["ci_high"]) == (1.0, 1.0, 1.0)
    assert "0 qualify (at most 1.0 points below it on every one), 8 lose more, 0 undecided" in row["reason"]


def test_saving_without_loss_is_inconclusive_when_no_setting_is_decided(fake):
    """Every VISOR setting equals the full model on the hard task but for two documents, one won and one lost:
    no loss, but a CI too wide to show non-inferiority at the corrected level, nor a loss."""
    summary, samples, _ = fake
    samples = samples.copy()
    full = samples[(samples["method"] == "llava_full") & (samples["model"] == "reference_ov")
                   & (samples["benchmark"] == "synth_marker")].set_index("doc_id")["score"]
    right, wrong = full[full == 1].index[0], full[full == 0].index[0]
    visor = (samples["method"] == "visor") & (samples["benchmark"] == "synth_marker")
    samples.loc[visor, "score"] = samples.loc[visor, "doc_id"].map(full).to_numpy()
    samples.loc[visor & (samples["doc_id"] == right), "score"] = 0.0
    samples.loc[visor & (samples["doc_id"] == wrong), "score"] = 1.0
    row = run("visor_saving_without_loss", tables_of(summary, samples))
    assert row["verdict"] == INCONCLUSIVE, row["reason"]
    assert row["reproduced_value"] == 1.0 and row["ci_high"] > 1.0
    assert "0 qualify (at most 1.0 points below it on every one), 0 lose more, 8 undecided" in row["reason"]


# --- the policy against the fixed configurations ------------------------------------------------------------

def test_policy_is_compared_with_the_fixed_curve_at_every_threshold(fake):
    row = run("visor_policy_vs_fixed", tables_of(*fake))
    assert row["detail"].startswith("15 settings of VISOR (policy) against the curve of VISOR (fixed configuration) "
                                    "on 3 benchmark(s)")  # 5 thresholds x 3 benchmarks
    summary, samples, _ = fake
    failing = run("visor_policy_vs_fixed", tables_of(summary, set_scores(samples, 0.0, "threshold")))
    assert failing["verdict"] == NOT_REPRODUCED


def test_a_policy_outside_the_fixed_range_has_no_partner(fake):
    summary, samples, _ = fake
    summary = summary.copy()
    summary.loc[summary["setting_id"] == "threshold-0.5", "mean_flops_llm_prefill"] = 1.0  # cheaper than SA 0
    row = run("visor_policy_vs_fixed", tables_of(summary, samples))
    assert "3 outside its FLOP range, not counted (tau 0.5 on synth_background" in row["detail"]
    assert row["detail"].startswith("12 settings")


# --- VISOR-TR ------------------------------------------------------------------------------------------------

def test_visor_tr_extra_saving_counts_only_without_loss(fake):
    summary, samples, _ = fake
    failing = run("visor_tr_more_saving", tables_of(summary, set_scores(samples, 0.0, "threshold-0.9_token")))
    assert failing["verdict"] == NOT_REPRODUCED
    assert "2 settings tried" in failing["reason"] and "2 lose more" in failing["reason"]
    # VISOR-TR answering exactly as the policy at the same threshold: its FLOP saving counts
    samples = samples.copy()
    policy = samples[samples["setting_id"] == "threshold-0.9"].set_index(["benchmark", "doc_id"])["score"]
    tr = samples["setting_id"].str.startswith("threshold-0.9_token")
    samples.loc[tr, "score"] = [policy[(b, d)] for b, d in zip(samples.loc[tr, "benchmark"], samples.loc[tr, "doc_id"])]
    held = run("visor_tr_more_saving", tables_of(summary, samples))
    assert held["reproduced_value"] == pytest.approx(held["ci_low"]) and held["reproduced_value"] > 1.5
    # the fake token reduction saves 1.8x at tokens 0.25: short of the paper's 2.1x (the claim's threshold)
    assert held["verdict"] == NOT_REPRODUCED and "at least 2.10x" in held["reason"]


# --- claims that need three configurations -----------------------------------------------------------------

def test_claims_about_the_family_need_three_configurations(fake):
    summary, samples, _ = fake
    two = summary[summary["setting_id"] != "sa_layers-0"]
    for claim_id in ("visor_near_full_sa_layers", "visor_policy_vs_fixed"):
        assert run(claim_id, tables_of(summary, samples))["verdict"] != NOT_TESTABLE
        row = run(claim_id, tables_of(two, samples))
        assert (row["verdict"], row["reason"]) == (NOT_TESTABLE, "needs >= 3 configurations; this checkpoint has 2")
    assert run("visor_sa_layers_help_hard", tables_of(two, samples))["verdict"] != NOT_TESTABLE  # two suffice


def test_the_not_testable_kind_is_a_column_and_the_summary_groups_by_it(fake):
    summary, samples, _ = fake
    two = summary[summary["setting_id"] != "sa_layers-0"]
    table = audit([CLAIMS["visor_near_full_sa_layers"], CLAIMS["visor_sa_layers_help_hard"]],
                  tables_of(two, samples.iloc[:0]), "offline")
    kinds = dict(zip(table["id"], table["not_testable"]))
    assert kinds == {"visor_near_full_sa_layers": NOT_TESTABLE_IN_PROFILE,  # fewer configurations than it needs
                     "visor_sa_layers_help_hard": NOT_TESTABLE_IN_RUN}  # no per-sample scores to compare
    assert (table["verdict"] == NOT_TESTABLE).all()
    assert "**Testable in this profile, but not with this run's results** (1):" in claims.summary_markdown(table)
    swapped = table.assign(not_testable=[NOT_TESTABLE_IN_RUN, NOT_TESTABLE_IN_PROFILE])  # the column decides
    assert f"- {table['claim'].iloc[0]} — " in claims.summary_markdown(swapped)
    with pytest.raises(ValueError, match="no not_testable column"):
        claims.summary_markdown(table.drop(columns="not_testable"))
    outside = audit([claim for claim in CLAIMS.values() if "offline" not in claim["profiles"]][:1],
                    tables_of(summary, samples), "offline")
    assert outside["not_testable"].tolist() == [NOT_TESTABLE_IN_PROFILE]


def test_min_configurations_must_be_a_positive_integer(tmp_path):
    claim = {**CLAIMS["visor_near_full_sa_layers"], "min_configurations": "three"}
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"claims": [claim]}))
    with pytest.raises(ValueError, match="min_configurations must be a positive integer, got 'three'"):
        claims.load_claims(path)


# --- VISOR's quality gate ----------------------------------------------------------------------------------

def test_an_under_trained_visor_makes_every_visor_claim_inconclusive(fake):
    open_gate = audit(list(CLAIMS.values()), tables_of(*fake, training=fake_results.training_table({"full": 1.0})),
                      "offline").set_index("id")
    closed = audit(list(CLAIMS.values()), tables_of(*fake, training=fake_results.training_table({"full": 5.0})),
                   "offline").set_index("id")
    plain = audit(list(CLAIMS.values()), tables_of(*fake), "offline").set_index("id")
    pd.testing.assert_frame_equal(open_gate, plain)
    visor = [i for i, claim in CLAIMS.items() if claims.is_visor_claim(claim, "offline")]
    assert "visor_policy_adapts" in visor and "hired_beats_random_fine" not in visor
    for claim_id in CLAIMS:
        tested = plain.loc[claim_id, "verdict"] != NOT_TESTABLE
        if claim_id in visor and tested:
            assert closed.loc[claim_id, "verdict"] == INCONCLUSIVE
            assert closed.loc[claim_id, "reason"].startswith(
                "VISOR under-trained: its largest configuration is 5.0 points below its host on validation")
        else:
            assert closed.loc[claim_id, "verdict"] == plain.loc[claim_id, "verdict"], claim_id
    # the gate's width is the config's audit.visor_gate_points
    wide = audit(list(CLAIMS.values()), tables_of(*fake, training=fake_results.training_table({"full": 5.0})),
                 "offline", gate_points=6.0).set_index("id")
    pd.testing.assert_frame_equal(wide, plain)


def test_the_gate_reads_the_last_step_and_names_a_malformed_table():
    table = fake_results.training_table({"full": 5.0})
    assert claims.visor_gate(table).startswith("VISOR under-trained: its largest configuration is 5.0 points")
    assert "2 SA layers at step 800" in claims.visor_gate(table)
    early = table[table["step"] < 800]  # at step 400 the largest configuration is 10 points further behind
    assert "is 15.0 points below" in claims.visor_gate(early)
    assert claims.visor_gate(pd.DataFrame()) == ""
    with pytest.raises(ValueError, match="has no column"):
        claims.visor_gate(table.drop(columns="configuration"))
    with pytest.raises(ValueError, match="no val_accuracy rows of the host"):
        claims.visor_gate(table[table["configuration"] != "host"])


# --- half training budget ----------------------------------------------------------------------------------

def test_half_budget_verdicts_stand_beside_the_full_budget_ones(fake):
    summary, samples, latency = fake
    plain = audit(list(CLAIMS.values()), tables_of(summary, samples, latency), "offline").set_index("id")
    assert (plain["at_half_budget"] == "").all()  # no half-budget runs: blank
    both = fake_results.with_half_budget(summary, samples, loss=0.9)
    table = audit(list(CLAIMS.values()), tables_of(*both, latency), "offline").set_index("id")
    pd.testing.assert_frame_equal(table.drop(columns="at_half_budget"), plain.drop(columns="at_half_budget"))
    for claim_id, claim in CLAIMS.items():
        half = table.loc[claim_id, "at_half_budget"]
        assert (half in claims.VERDICTS) if claims.is_visor_claim(claim, "offline") else half == "", claim_id
    # the half-budget VISOR loses the hard task: no longer ahead of HiRED at matched FLOPs
    assert table.loc["visor_beats_hired_hard", "verdict"] == REPRODUCED
    assert table.loc["visor_beats_hired_hard", "at_half_budget"] == NOT_REPRODUCED
    # each budget's own training rows gate it
    training = fake_results.training_table({"full": 1.0, "half": 5.0})
    gated = audit(list(CLAIMS.values()), tables_of(*both, latency, training), "offline").set_index("id")
    assert gated.loc["visor_beats_hired_hard", "verdict"] == REPRODUCED
    assert gated.loc["visor_beats_hired_hard", "at_half_budget"] == INCONCLUSIVE


def test_the_claims_table_shows_the_half_budget_column_only_where_there_is_one():
    from visor_model.reporting.notebook import verdict_html

    frame = pd.DataFrame([{"id": "a", "claim": "c", "paper_value": 1, "reproduced": "1", "verdict": INCONCLUSIVE,
                           "at_half_budget": NOT_REPRODUCED, "reason": "r"},
                          {"id": "b", "claim": "c", "paper_value": 1, "reproduced": "1", "verdict": REPRODUCED,
                           "at_half_budget": np.nan, "reason": "r"}])
    page = verdict_html(frame)
    assert "<th>at half VISOR training</th>" in page
    assert ('<td class="verdict" style="background-color: #fff2cc">inconclusive</td>'
            '<td class="verdict" style="background-color: #f9d6d5">not reproduced</td></tr>') in page
    assert "at half VISOR training" not in verdict_html(frame.assign(at_half_budget=""))


# --- HiRED cheap enough to partner VISOR's smallest configuration ------------------------------------------

def test_hired_without_newlines_reaches_below_visor_smallest_configuration():
    """The default sweep's HiRED settings without newline tokens, on the shipped LLaVA-OneVision reference and
    the synthetic benchmarks' images: the cheapest costs at most 0.06 of the full model's LLM-prefill FLOPs
    (VISOR's smallest configuration costs about 0.07-0.08); with the newlines kept the floor is about 0.17."""
    import torch

    from visor_model import workflow_config as wc
    from visor_model.efficiency.accounting import llm_prefill_flops
    from visor_model.efficiency.shapes import LLMShape
    from visor_model.llava.checkpoints import load_checkpoint
    from visor_model.llava.runner import VisionLanguageRunner, prompt_ids
    from visor_model.methods.base import FullTokens
    from visor_model.methods.hired import HiRED
    from visor_model.reference import tasks

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    settings = [s for sweep in config["methods"]["hired"] if "reference_ov" in sweep["models"]
                for s in wc.sweep_settings(sweep) if s.get("newlines") == "none"]
    assert settings and min(s["budget"] for s in settings) <= 0.05
    torch.set_num_threads(1)
    loaded = load_checkpoint(str(REPO / "checkpoints" / "reference_ov"))
    shape = LLMShape.from_config(loaded.model.config.text_config)
    ratios = {}
    for setting in settings:
        reducer = HiRED(**{k: v for k, v in setting.items()}, model=loaded.model)
        for task in config["benchmarks"]:
            for row in tasks.generate_split(task, "test", 3, seed=0):
                n_text = len(prompt_ids(loaded.tokenizer, loaded.model.config.image_token_id, row["question"])) - 1
                counts = []
                for method in (FullTokens(), reducer):
                    runner = VisionLanguageRunner(loaded, method)
                    with torch.no_grad():
                        _, (kept,) = runner.visual_tokens(*runner.process_images([row["image"]]), ["k"])
                    counts.append(llm_prefill_flops(shape, n_text, kept.features.shape[0]).total)
                ratios.setdefault(setting["budget"], []).append(counts[1] / counts[0])
    assert min(np.mean(r) for r in ratios.values()) <= 0.06, ratios
