"""The report and the claims audit: the computations (visor_model.audit.analysis, visor_model.audit.claims), the claims
file, and the notebooks rendered on full and on sparse tables (every section says what is missing)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import fake_results
import numpy as np
import pandas as pd
import pytest
import yaml

from visor_model import stats
from visor_model.audit import analysis, claims
from visor_model.audit.claims import Measurement, Tables, audit, judge, load_claims
from visor_model.reporting import render as render_report

REPO = Path(__file__).resolve().parent.parent
CLAIMS = REPO / "config" / "claims.yaml"


@pytest.fixture(scope="module")
def tables():
    summary, samples, latency = fake_results.tables(n=60)
    return Tables(summary, samples, latency, seed=0, resamples=400)


# --- analysis -------------------------------------------------------------------------------------------

def test_pareto_mask_keeps_undominated_points_and_ties():
    cost = [1, 2, 3, 4, 2, np.nan]
    quality = [0.5, 0.7, 0.6, 0.9, 0.7, 1.0]
    assert stats.pareto_mask(cost, quality).tolist() == [True, True, False, True, True, False]


def test_visor_viable_frontier_keeps_ties_duplicates_and_order():
    """The expected selections are those of the loop VISOR's training used before it shared `pareto_mask`."""
    from visor_model.methods.visor.evaluation import pareto_frontier

    def points(*pairs):
        return [{"flops": flops, "accuracy": accuracy, "name": i} for i, (flops, accuracy) in enumerate(pairs)]

    cases = [
        # unsorted, with duplicates and ties in both: cheapest first, equal FLOPs in their given order
        (points((3.0, .9), (1.0, .5), (2.0, .7), (1.0, .5), (2.0, .6), (4.0, .9), (2.0, .7)), [1, 3, 2, 6, 0]),
        (points((2.0, .1), (2.0, .3), (2.0, .3), (2.0, .2)), [1, 2]),  # equal FLOPs: the best accuracies
        (points((5.0, .4), (3.0, .4), (3.0, .4), (4.0, .4)), [1, 2]),  # equal accuracy: the cheapest
        (points((1.0, .2), (2.0, .5), (3.0, .5), (4.0, .9)), [0, 1, 3]),  # a family, cheapest first
        (points((1.0, .5), (2.0, .9), (3.0, .8)), [0, 1]),  # the largest dominated: viable_configurations adds it
        (points((1.0, .4)), [0]),
        ([], []),
    ]
    for given, expected in cases:
        frontier = pareto_frontier(given)
        assert [p["name"] for p in frontier] == expected
        assert all(p is given[p["name"]] for p in frontier)  # the dicts themselves (the largest is found by identity)
    same = {"flops": 1.0, "accuracy": 0.5}
    other = {"flops": 2.0, "accuracy": 0.8}
    frontier = pareto_frontier([other, same, same])
    assert len(frontier) == 3 and frontier[0] is same and frontier[1] is same and frontier[2] is other


def test_paired_bootstrap_constant_difference_has_a_degenerate_interval():
    mean, low, high = stats.paired_bootstrap({"b": np.ones((2, 30))}, resamples=200)
    assert (mean, low, high) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_resamples_documents_once_for_all_comparisons():
    rng = np.random.default_rng(0)
    d = rng.choice([-1.0, 0.0, 1.0], size=200)
    # two comparisons with opposite differences on the same documents: their mean is exactly 0 in every resample
    mean, low, high = stats.paired_bootstrap({"b": np.vstack([d, -d])}, resamples=300)
    assert mean == 0 and low == 0 and high == 0
    # a single comparison: the interval covers the mean and has width
    mean, low, high = stats.paired_bootstrap({"b": d[None, :]}, resamples=300)
    assert low < mean < high


def test_series_and_setting_labels():
    rows = [({"method": "llava_full"}, "full"), ({"method": "hired", "mode": "reference_code"}, "hired_code"),
            ({"method": "hired", "mode": "paper"}, "hired_paper"),
            ({"method": "visor", "sa_layers": 2.0}, "visor_fixed"),
            ({"method": "visor", "threshold": 0.9}, "visor_policy"),
            ({"method": "visor", "threshold": 0.9, "token_budget": 0.5}, "visor_tr"),
            ({"method": "random_drop", "budget": 0.2}, "random_drop")]
    for row, key in rows:
        assert analysis.series_key(row) == key
    assert set(analysis.PALETTE) == set(analysis.SERIES_LABELS.values())
    assert len(set(analysis.PALETTE.values())) == len(analysis.PALETTE)  # one colour per method
    assert analysis.setting_label({"budget": 0.2, "mode": "paper"}) == "budget 0.2"
    assert analysis.setting_label({"threshold": 0.9, "token_budget": 0.5}) == "tau 0.9, tokens 0.5"
    assert analysis.setting_label({"sa_layers": 2.0}) == "SA layers 2"
    assert analysis.setting_label({}) == "full"


def test_cluster_table_averages_clusters_and_inverts_the_mean_ratio(tables):
    table = analysis.cluster_table(tables.summary)
    full = table[(table["model"] == "reference_ov") & (table["series_label"] == "full model")].iloc[0]
    rows = tables.summary[(tables.summary["model"] == "reference_ov") & (tables.summary["method"] == "llava_full")]
    assert full["easy_avg"] == pytest.approx(100 * rows[rows["cluster"] == "easy"]["accuracy"].mean())
    assert full["hard_avg"] == pytest.approx(100 * rows[rows["cluster"] == "hard"]["accuracy"].mean())
    assert (full["n_easy"], full["n_hard"], full["flops_saving"]) == (2, 1, pytest.approx(1.0))
    visor = table[table["setting_id"] == "sa_layers-0"].iloc[0]
    ratio = tables.summary[tables.summary["setting_id"] == "sa_layers-0"]["llm_prefill_ratio"].mean()
    assert visor["flops_saving"] == pytest.approx(1 / ratio)


def test_matched_comparisons_interpolate_the_competitor_curve_and_never_extrapolate(tables):
    comparisons = analysis.matched_comparisons(tables.summary, tables.samples, resamples=200)
    assert not comparisons.empty
    assert (comparisons["a"] != comparisons["b"]).all()
    summary = analysis.add_series(tables.summary)
    for _, row in comparisons.iterrows():  # every anchor lies inside its competitor's FLOP range
        curve = summary[(summary["model"] == row["model"]) & (summary["benchmark"] == row["benchmark"])
                        & (summary["series_label"] == row["b"])]["mean_flops_llm_prefill"]
        assert curve.min() <= row["a_flops"] <= curve.max()
    row = comparisons[(comparisons["a"] == "VISOR (fixed configuration)") & (comparisons["benchmark"] == "synth_marker")
                      & (comparisons["b"] == "random drop")].iloc[0]
    assert row["a_setting"] == "SA layers 1" and row["b_setting"] == "0.81 x budget 0.1 + 0.19 x budget 0.2"
    assert row["difference"] == pytest.approx(row["a_accuracy"] - row["b_accuracy"])
    assert row["ci_low"] <= row["difference"] <= row["ci_high"]
    assert "points higher than random drop interpolated at its LLM-prefill FLOPs" in analysis.describe_comparison(row)
    # VISOR's smallest configuration is cheaper than every random-drop setting: no partner
    assert comparisons[(comparisons["a_setting"] == "SA layers 0") & (comparisons["b"] == "random drop")].empty


def test_hired_fidelity_is_code_minus_paper(tables):
    fidelity = analysis.hired_fidelity(tables.summary, tables.samples, resamples=100)
    assert set(fidelity["model"]) == {"reference_next"}
    assert np.allclose(fidelity["difference"], fidelity["code_accuracy"] - fidelity["paper_accuracy"])
    assert (fidelity["code_newline_tokens"] == 0).all()


def test_policy_configurations_shares_sum_to_one(tables):
    configurations = analysis.policy_configurations(tables.samples, tables.summary)
    assert not configurations.empty
    totals = configurations.groupby(["model", "benchmark", "setting_id"])["share"].sum()
    assert np.allclose(totals, 1.0)


def test_analysis_on_empty_or_old_tables_returns_empty_frames():
    empty = pd.DataFrame()
    assert analysis.cluster_table(empty).empty
    assert analysis.matched_comparisons(empty, empty).empty
    assert analysis.hired_fidelity(empty, empty).empty
    assert analysis.policy_configurations(empty, empty).empty
    summary = pd.DataFrame({"model": ["m"], "method": ["llava_full"], "setting_id": ["default"], "benchmark": ["b"],
                            "accuracy": [0.5]})
    assert analysis.matched_comparisons(summary, empty).empty  # no FLOP columns


# --- the claims file and the verdicts -------------------------------------------------------------------

def test_claims_file_is_valid_and_covers_the_papers_claims():
    loaded = load_claims(CLAIMS)
    ids = {claim["id"] for claim in loaded}
    for claim_id in ("visor_saving_8_6x", "visor_near_full_sa_layers", "visor_beats_hired_hard",
                     "visor_beats_visionzip_hard", "visor_docvqa_1_6x_seed", "visor_tr_saving_18x",
                     "hired_20_close_to_full_coarse", "hired_docvqa_20", "hired_docvqa_40", "hired_throughput_4_7x",
                     "hired_ttft_minus_78", "hired_beats_random_fine", "hired_code_matches_paper"):
        assert claim_id in ids
    seed = next(c for c in loaded if c["id"] == "visor_docvqa_1_6x_seed")
    assert seed["provenance"] == "unverified"
    for claim in loaded:
        assert claim["profiles"] or claim["not_testable_reason"]
    # the checkpoint-specific numbers are paper-profile only; the behaviour claims are tested offline
    by_id = {claim["id"]: claim for claim in loaded}
    assert by_id["hired_docvqa_20"]["profiles"] == ["paper"]
    for claim_id in ("visor_beats_hired_hard", "hired_beats_random_fine", "hired_20_close_to_full_coarse",
                     "hired_code_matches_paper"):
        assert "offline" in by_id[claim_id]["profiles"]


def test_load_claims_rejects_unknown_computations_and_tests(tmp_path):
    claim = {"id": "x", "claim": "c", "source": "s", "paper_value": 1, "unit": "x", "profiles": ["offline"],
             "not_testable_reason": "r", "computation": "no_such_thing", "args": {},
             "test": {"type": "greater", "threshold": 0}}
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"claims": [claim]}))
    with pytest.raises(ValueError, match="unknown computation 'no_such_thing'"):
        load_claims(path)
    claim.update(computation="paired_gap", test={"type": "roughly"})
    path.write_text(yaml.safe_dump({"claims": [claim]}))
    with pytest.raises(ValueError, match="unknown test 'roughly'"):
        load_claims(path)


@pytest.mark.parametrize("test,m,verdict", [
    ({"type": "at_least", "target": 8.6, "tolerance": 1.0}, Measurement(7.7), "reproduced"),
    ({"type": "at_least", "target": 8.6, "tolerance": 1.0}, Measurement(7.5), "not reproduced"),
    ({"type": "within", "target": 60.8, "tolerance": 2.0}, Measurement(62.0), "reproduced"),
    ({"type": "within", "target": 60.8, "tolerance": 2.0}, Measurement(63.0), "not reproduced"),
    ({"type": "between", "low": -14, "high": 19}, Measurement(20.0), "not reproduced"),
    ({"type": "greater", "threshold": 0}, Measurement(3.0, 0.5, 6.0), "reproduced"),
    ({"type": "greater", "threshold": 0}, Measurement(3.0, -0.5, 6.0), "inconclusive"),
    ({"type": "greater", "threshold": 0}, Measurement(-3.0, -6.0, -0.5), "not reproduced"),
    ({"type": "greater", "threshold": 1.0}, Measurement(1.6), "reproduced"),
    ({"type": "less", "threshold": 0}, Measurement(-3.0, -6.0, -0.1), "reproduced"),
    ({"type": "no_worse_than", "margin": 2.0}, Measurement(-1.0, -1.9, 0.5), "reproduced"),
    ({"type": "no_worse_than", "margin": 2.0}, Measurement(-1.0, -2.5, 0.5), "inconclusive"),
    ({"type": "no_worse_than", "margin": 2.0}, Measurement(-3.0, -4.0, -2.1), "not reproduced"),
    ({"type": "equivalent", "margin": 1.0}, Measurement(0.2, -0.8, 0.9), "reproduced"),
    ({"type": "equivalent", "margin": 1.0}, Measurement(-1.0, -1.6, -0.4), "inconclusive"),
    ({"type": "equivalent", "margin": 1.0}, Measurement(-2.0, -2.6, -1.4), "not reproduced"),
    ({"type": "within", "target": 60.8, "tolerance": 2.0}, Measurement(62.0, 61.0, 63.0), "inconclusive"),
    # nothing measured is no verdict on the paper
    ({"type": "at_least", "target": 1.0}, Measurement(float("nan"), detail="none qualifies"),
     "not testable in this profile"),
])
def test_judge(test, m, verdict):
    assert judge(test, m)[0] == verdict


def test_judge_names_a_difference_in_the_claimed_direction_that_is_not_significant():
    verdict, reason = judge({"type": "greater", "threshold": 0}, Measurement(2.0, -1.0, 5.0), "points")
    assert verdict == "inconclusive"
    assert reason.startswith("measured 2.00 points (95% CI -1.00 to 5.00): the 95% CI straddles 0.00 points")
    assert "meets the claim, but not significantly" in reason


def test_audit_offline_profile_on_full_tables(tables):
    table = audit(load_claims(CLAIMS), tables, "offline").set_index("id")
    assert set(table["verdict"]) <= set(claims.VERDICTS)
    # checkpoint-specific numbers: not testable offline, with the claim's reason
    assert table.loc["hired_docvqa_20", "verdict"] == "not testable in this profile"
    assert "LLaVA-NeXT-7B" in table.loc["hired_docvqa_20", "reason"]
    # behaviour claims measured on the fake tables (fine-grained accuracy kept by VISOR, lost by dropping)
    for claim_id in ("visor_beats_hired_hard", "visor_beats_random_drop_hard", "hired_beats_random_fine",
                     "hired_loses_fine_at_20", "hired_drops_fine_more_than_coarse", "visor_policy_adapts",
                     "hired_20_close_to_full_coarse", "hired_prefill_faster"):
        assert table.loc[claim_id, "verdict"] == "reproduced", (claim_id, table.loc[claim_id, "reason"])
    row = table.loc["visor_beats_hired_hard"]
    assert row["ci_low"] <= row["reproduced_value"] <= row["ci_high"]
    # a sweep with one alpha cannot test the alpha ablation: this run lacks the runs
    assert table.loc["hired_alpha_half_best", "verdict"] == "not testable in this profile"
    assert table.loc["hired_alpha_half_best", "not_testable"] == "in this run"
    assert "alpha" in table.loc["hired_alpha_half_best", "reason"]


def test_audit_is_deterministic(tables):
    first = audit(load_claims(CLAIMS), tables, "offline")
    second = audit(load_claims(CLAIMS), tables, "offline")
    pd.testing.assert_frame_equal(first, second)


def test_audit_with_missing_runs_says_what_is_missing():
    summary, samples, _ = fake_results.tables(n=30, with_visor=False, hired_on_ov=False)
    table = audit(load_claims(CLAIMS), Tables(summary, samples, pd.DataFrame(), resamples=100),
                  "offline").set_index("id")
    row = table.loc["visor_beats_hired_hard"]
    assert row["verdict"] == "not testable in this profile" and "no run of" in row["reason"]
    assert "latency" in table.loc["hired_prefill_faster", "reason"]


def test_models_at_floor_make_comparisons_not_testable():
    summary, samples, latency = fake_results.tables(n=20)
    samples["score"] = 0.0
    summary["accuracy"] = 0.0
    table = audit(load_claims(CLAIMS), Tables(summary, samples, latency, resamples=100), "offline").set_index("id")
    row = table.loc["hired_beats_random_fine"]
    assert row["verdict"] == "not testable in this profile" and "every compared run scores 0" in row["reason"]


def test_summary_in_words(tables):
    table = audit(load_claims(CLAIMS), tables, "offline")
    text = claims.summary_markdown(table)
    counts = table["verdict"].value_counts()
    assert f"{counts['reproduced']} reproduced" in text
    assert "**What held:**" in text and "**What did not hold:**" in text
    assert "VISOR keeps accuracy on hard (fine-grained) tasks" in text


# --- notebooks ----------------------------------------------------------------------------------------

SECTIONS = ("report", "tradeoffs", "visor", "policy", "hired", "paired", "results")
HEADINGS = ("Summary: what held and what did not", "The claims audit", "Accuracy against LLM-prefill FLOPs",
            "Easy and hard clusters", "Latency against FLOPs", "VISOR's training, its quality gate and its controls",
            "VISOR's policy", "HiRED: the published algorithm",
            "Paired comparisons at matched FLOPs", "Results table", "Provenance")


def render(folder: Path, summary, samples, latency, sections=SECTIONS, training=None) -> tuple[str, list]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.csv" for name in ("summary", "samples", "latency", "claims", "training")}
    summary.to_csv(paths["summary"], index=False)
    samples.to_csv(paths["samples"], index=False)
    latency.to_csv(paths["latency"], index=False)
    (training if training is not None else pd.DataFrame()).to_csv(paths["training"], index=False)
    audit(load_claims(CLAIMS), Tables.read(paths["summary"], paths["samples"], paths["latency"], paths["training"],
                                           resamples=100), "offline").to_csv(paths["claims"], index=False)
    parameters = {f"{name}_path": str(path) for name, path in paths.items()}
    parameters.update(profile="offline", config_sha256="ab" * 32, seed=0, resamples=100, gate_points=3.0,
                      controls={})
    executed, errors = [], []
    for section in sections:
        notebook = render_report.execute_section(str(REPO / "notebooks" / f"{section}.ipynb"),
                                                 folder / f"{section}.ipynb", parameters)
        errors += [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"
                   or o.get("name") == "stderr"]
        executed.append(folder / f"{section}.ipynb")
    render_report.export(render_report.gather(executed), folder / "final.html")
    return (folder / "final.html").read_text(), errors


def test_notebooks_have_a_parameters_cell_and_read_result_tables_only():
    import nbformat

    for section in SECTIONS:
        notebook = nbformat.read(REPO / "notebooks" / f"{section}.ipynb", as_version=4)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, section
        source = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
        assert "results/eval" not in source and "read_json" not in source


def test_report_renders_every_section_without_code(tmp_path):
    summary, samples, latency = fake_results.tables(n=40)
    html, errors = render(tmp_path / "full", summary, samples, latency, training=fake_results.training_table())
    assert not errors, errors
    assert "passed: its largest configuration" in html and "converge by the test" in html
    for heading in HEADINGS:
        assert heading in html, heading
    assert "Not shown" not in html
    assert html.count("<img") >= 10
    assert "reproduced" in html and "Contents:" in html
    assert "import " not in html  # code cells excluded
    # the first screen answers: the hard-cluster frontier and the verdict counts, before the contents, the
    # method notes and the full tables
    order = [html.index(marker) for marker in (
        "<h1", "<img", "Mean accuracy (%) on the hard (fine-grained) benchmarks", '<table class="verdict-counts">',
        "Contents:", '<table class="verdicts">', 'id="How-the-numbers-were-measured"',
        'id="HiRED:-the-published-algorithm', 'id="Results-table"')]
    assert order == sorted(order), order
    counts = html[html.index('<table class="verdict-counts">'):]
    counts = counts[:counts.index("</table>")]
    for verdict in claims.VERDICTS:
        assert re.search(rf"<b>\d+ {verdict}</b>", counts), verdict
    for target in re.findall(r'href="#(claim-[^"]+)"', counts):  # each linked claim has its row in the table
        assert f'id="{target}"' in html, target


def test_report_degrades_gracefully_without_methods_latency_or_flops(tmp_path):
    summary, samples, _ = fake_results.tables(n=20, with_visor=False, with_next=False, hired_on_ov=False)
    summary = summary.drop(columns=[c for c in summary.columns if c.startswith("mean_flops") or c.endswith("_ratio")
                                    or c.endswith("_saving")])
    html, errors = render(tmp_path / "sparse", summary, samples, pd.DataFrame())
    assert not errors, errors
    for heading in HEADINGS:
        assert heading in html, heading
    for sentence in ("no LLM-prefill FLOP counts", "no latency table", "no VISOR policy evaluations",
                     "no model evaluated with both HiRED modes",
                     "no setting of one method lies inside another's LLM-prefill FLOP range",
                     "this run has no VISOR training records"):
        assert sentence in html, sentence


def test_gather_puts_the_sections_in_order_after_a_table_of_contents(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    paths = []
    for i, cells in enumerate(([new_markdown_cell("# Report\n\nintro"), new_code_cell("headline"),
                                new_markdown_cell("## First section")],
                               [new_markdown_cell("## Second section")], [new_markdown_cell("## Third section")])):
        path = tmp_path / f"{i}.ipynb"
        nbformat.write(new_notebook(cells=cells), path)
        paths.append(path)
    merged = render_report.gather(paths)
    sources = [c.source for c in merged.cells]
    # the title and the headline first (the report's first screen), then the contents before the first section
    assert sources[:2] == ["# Report\n\nintro", "headline"]
    assert sources[2].startswith("**Contents:**") and "(#First-section)" in sources[2]
    assert "(#Second-section)" in sources[2] and "(#Third-section)" in sources[2]
    assert sources[3:] == ["## First section", "## Second section", "## Third section"]
    # without a section heading, the contents follow the title
    path = tmp_path / "title.ipynb"
    nbformat.write(new_notebook(cells=[new_markdown_cell("# Report"), new_code_cell("x")]), path)
    assert [c.source[:12] for c in render_report.gather([path]).cells] == ["# Report", "**Contents:*", "x"]


def test_unset_setting_fields_match_each_other(tables):
    """Runs without an alpha (the micro config's grids leave it out) still pair on `alpha`."""
    summary = tables.summary.copy()
    summary.loc[summary["method"] == "hired", "alpha"] = np.nan
    table = audit(load_claims(CLAIMS), Tables(summary, tables.samples, tables.latency, resamples=100),
                  "offline").set_index("id")
    assert table.loc["hired_code_matches_paper", "verdict"] != "not testable in this profile"


def test_a_policy_trained_at_floor_is_not_tested(tables):
    samples = tables.samples.copy()
    summary = tables.summary.copy()
    policy = (samples["method"] == "visor") & samples["setting_id"].str.startswith("threshold")
    samples.loc[policy, "score"] = 0.0
    table = audit(load_claims(CLAIMS), Tables(summary, samples, tables.latency, resamples=100),
                  "offline").set_index("id")
    assert "every compared run scores 0" in table.loc["visor_policy_adapts", "reason"]


def test_gather_numbers_figures_through_the_report(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    paths = []
    for i in range(2):
        cell = new_code_cell("", outputs=[new_output("display_data", data={"text/markdown": "**Figure 1.** a plot"})])
        path = tmp_path / f"{i}.ipynb"
        nbformat.write(new_notebook(cells=[cell]), path)
        paths.append(path)
    merged = render_report.gather(paths)
    captions = [o["data"]["text/markdown"] for c in merged.cells for o in c.get("outputs", [])]
    assert captions == ["**Figure 1.** a plot", "**Figure 2.** a plot"]


# --- the report at the papers' scale (paper.yaml's benchmarks, two models) ----------------------------------

def test_verdict_table_is_one_row_per_claim_with_the_reason_in_details():
    from visor_model.reporting.notebook import shorten, verdict_html

    frame = pd.DataFrame([
        {"id": "a_claim", "claim": "Short claim.", "paper_value": 8.6, "reproduced": "7.9x [7.1, 8.8]",
         "verdict": "reproduced", "reason": "holds", "detail": np.nan, "test": "at least 7.60x",
         "source": "VISOR paper", "provenance": "paper"},
        {"id": "b_claim", "claim": "word " * 30, "paper_value": np.nan, "reproduced": "n/a",
         "verdict": "not testable in this profile", "reason": "needs <LLaVA-NeXT-7B>", "detail": "", "test": "> 0",
         "source": "HiRED paper", "provenance": "paper"}])
    page = verdict_html(frame, "Claims")
    assert page.count("<tr>") == 3 and page.count("<details>") == 2
    assert ('<details><summary title="Short claim.">Short claim.</summary>'
            "<p><b>Reason:</b> holds</p><p><b>Needs:</b> at least 7.60x</p><p><b>Source:</b> VISOR paper</p>"
            "<p><b>Provenance:</b> paper</p></details>") in page
    assert f"</summary><p>{'word ' * 30}</p><p><b>Reason:</b> needs &lt;LLaVA-NeXT-7B&gt;</p>" in page  # cut: whole
    assert shorten("word " * 30) == "word " * 12 + "…" and len(shorten("word " * 30)) <= 64
    assert '<td class="verdict" style="background-color: #d9f2d9">reproduced</td>' in page
    assert '<td class="verdict" style="background-color: #eeeeee">not testable in this profile</td>' in page
    assert "<td>n/a</td>" in page  # the missing paper value
    assert shorten("Short claim.") == "Short claim."


def test_verdict_counts_link_each_group_to_its_claims():
    from visor_model.reporting.notebook import LINKED_CLAIMS, verdict_counts_html, verdict_html

    many = [f"untestable_{i}" for i in range(LINKED_CLAIMS + 1)]
    frame = pd.DataFrame({"id": ["a.claim", "b_claim", *many], "claim": "c", "reproduced": "1",
                          "verdict": ["reproduced", "reproduced", *["not testable in this profile"] * len(many)]})
    page = verdict_counts_html(frame, "The-claims-audit")
    assert page.count("<tr>") == 4 and f"Verdicts on the {len(frame)} audited claims" in page
    assert '<b>2 reproduced</b>' in page and '<b>0 not reproduced</b>' in page and "<b>0 inconclusive</b>" in page
    assert ('the whole 95% CI of the reproduced value meets the claim: <a href="#claim-a-claim">a.claim</a>, '
            '<a href="#claim-b_claim">b_claim</a>.') in page
    assert f"<b>{len(many)} not testable in this profile</b>" in page
    assert '<a href="#The-claims-audit">their reasons are in the claims table</a>' in page  # too many to list
    table = verdict_html(frame)
    assert '<td class="claim-id" id="claim-a-claim">a.claim</td>' in table  # the rows the links reach


def test_hard_frontier_is_one_panel_per_model_on_complete_hard_runs(tables):
    import matplotlib.pyplot as plt

    from visor_model.reporting import figures

    fig = figures.hard_frontier(tables.summary)
    try:
        panels = [ax for ax in fig.axes if ax.get_visible()]
        titles = [ax.get_title() for ax in panels]
        assert titles == ["reference_ov: 1 hard benchmark", "reference_next: 1 hard benchmark"]
        labels = [text.get_text() for text in fig.legends[0].get_texts()]
        assert labels[-1] == "Pareto frontier" and labels[0] == "full model"
    finally:
        plt.close(fig)
    assert figures.hard_frontier(tables.summary.drop(columns="cluster")) is None
    assert figures.hard_frontier(tables.summary.assign(cluster="easy")) is None


PAPER_SECTIONS = ("report", "tradeoffs", "results")  # the claims table, the grid figure, the widest tables


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory):
    summary, samples, latency = fake_results.tables(n=20, benchmarks=fake_results.PAPER_BENCHMARKS)
    folder = tmp_path_factory.mktemp("paper")
    html, errors = render(folder, summary, samples, latency, PAPER_SECTIONS)
    return folder / "final.html", html, errors


def test_report_at_paper_scale_renders_small_multiples_and_folds_the_claims(paper_report):
    _, html, errors = paper_report
    assert not errors, errors
    assert f"2 models, {len(fake_results.PAPER_BENCHMARKS)} benchmarks" in html
    claims_shown = len(load_claims(CLAIMS))
    table = html[html.index('<table class="verdicts">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == claims_shown + 1  # the header and one row per claim
    assert table.count("<details>") == claims_shown and table.count("<b>Reason:</b>") == claims_shown
    # accuracy against FLOPs: one figure of a panel per benchmark and model, not one figure per benchmark
    tradeoffs = html[html.index('id="Accuracy-against-LLM-prefill-FLOPs"'):html.index('id="Easy-and-hard-clusters')]
    assert tradeoffs.count("<img") == 1
    assert "one panel per benchmark and model" in tradeoffs
    for benchmark in fake_results.PAPER_BENCHMARKS:  # in the folded list of Pareto-frontier runs
        assert f"<strong>{benchmark}</strong> (reference_ov)" in tradeoffs, benchmark
    # the raw results (444 evaluations) folded under their caption
    assert re.search(r"<summary>Every evaluation \(\d+ rows\)</summary>", html)


WIDTH_SCRIPT = """<script>
var page = document.documentElement.clientWidth, outside = [];
document.querySelectorAll("body *").forEach(function (e) {
  var inBox = e.parentElement && e.parentElement.closest(".report-table");
  if (!inBox && e.getBoundingClientRect().right > page + 1) outside.push(e.tagName);
});
document.body.setAttribute("data-layout", document.documentElement.scrollWidth + " " + page + " " + outside.length);
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium (Debian package chromium)")
def test_report_at_paper_scale_does_not_overflow_a_1280_px_window(paper_report, tmp_path):
    """Lays the page out in headless Chromium at 1280 px: the page is no wider than the window and no element
    outside a table's own scroll box reaches past its right edge."""
    path, _, _ = paper_report
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace("</body>", WIDTH_SCRIPT))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,4000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    scroll_width, page_width, outside = map(int, re.search(r'data-layout="(\d+) (\d+) (\d+)"', dom).groups())
    assert page_width > 1200
    assert (scroll_width, outside) == (page_width, 0)


FIRST_SCREEN_SCRIPT = """<script>
function bottom(selector) {
  var e = document.querySelector(selector); return e ? e.getBoundingClientRect().bottom : -1;
}
document.body.setAttribute("data-first-screen", [bottom(".jp-OutputArea-output img"), bottom("table.verdict-counts"),
  bottom('[id="How-the-numbers-were-measured"]')].map(Math.round).join(" "));
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium (Debian package chromium)")
def test_report_first_screen_holds_the_hard_frontier_and_the_verdict_counts(paper_report, tmp_path):
    """Opened at 1366 x 900 px (a laptop), the report's first screen shows the hard-cluster frontier figure and the
    verdict counts whole; the explanations follow below it."""
    path, _, _ = paper_report
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace("</body>", FIRST_SCREEN_SCRIPT))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1366,900", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    figure, counts, measured = map(int, re.search(r'data-first-screen="(-?\d+) (-?\d+) (-?\d+)"', dom).groups())
    assert 0 < figure < counts <= 900, (figure, counts)
    assert measured > 900
