"""Each benchmark's primary metric, through lmms-eval's REAL task definitions: every lmms-eval task of
config/paper.yaml names a metric that the code reads and the task aggregates; for each worked example (CASES),
the installed task YAML (with its includes and `!function utils...`) builds lmms-eval's own
`ConfigurableTask` on one in-memory document in the task's schema; its `process_results` (the task's
utils.py function, or lmms-eval's built-in metric where the YAML names none) scores a made-up answer as in
an evaluation; the logged sample goes through `sample_rows` and an evaluation record through `summary_table`.
No network: only the dataset download is replaced (by the documents given here)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

from lmms_plugins.metrics import METRICS, primary_metric, sample_score, task_value
from lmms_plugins.run import EvaluationFailed, sample_rows
from visor_model.audit.tables import summary_table
from visor_model.rehearsal.tasks import task_definition

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
LMMS_EVAL = {name: spec for name, spec in PAPER["benchmarks"].items() if spec["source"] == "lmms_eval"}

# worked examples: task -> (a document in the task's schema, [(made-up filtered answer, expected score under the
# primary metric)])
CASES = {
    "docvqa_val": ({"questionId": "7", "question": "What is the date?", "answers": ["12/3/1998", "Dec 3, 1998"]},
                   [("12/3/1999", 1 - 1 / 9), ("12/3/1998", 1.0), ("no idea", 0.0)]),  # ANLS, below 0.5 -> 0
    "infovqa_val": ({"questionId": "3", "question": "How many?", "answers": ["1.2 million"]},
                    [("1.2 millions", 1 - 1 / 12), ("two", 0.0)]),
    "chartqa": ({"question": "What is the peak?", "answer": "42", "type": "human_test"},
                [("43", 1.0), ("45", 0.0), ("42", 1.0)]),  # relaxed: within 5% of a number
    "ocrbench": ({"question": "What is written?", "answer": ["Stop"], "dataset": "IIIT5K",
                  "question_type": "Regular Text Recognition"}, [("It says STOP", 1.0), ("Go", 0.0)]),
    # VQA accuracy: min(1, matching other answers / 3) averaged over the ten leave-one-out subsets
    "textvqa_val": ({"question": "what brand?", "question_id": 5, "ocr_tokens": [],
                     "answers": ["nokia", "nokia"] + ["samsung"] * 8}, [("Nokia", 0.6), ("samsung", 1.0), ("lg", 0.0)]),
    "gqa": ({"question": "Which side is the cup on?", "answer": "left", "imageId": "n1"},
            [("Left.", 1.0), ("right", 0.0)]),  # built-in exact_match, ignore_case + ignore_punctuation
    "scienceqa_img": ({"hint": "", "question": "Which is a mammal?", "choices": ["frog", "dog", "fish"], "answer": 1},
                      [("B", 1.0), ("B. dog", 1.0), ("C", 0.0)]),
    "pope": ({"question_id": "11", "question": "Is there a dog in the image?", "answer": "yes",
              "category": "adversarial"}, [("Yes", 1.0), ("no", 0.0)]),
    "mme": ({"question_id": "count/1.jpg", "question": "Are there two cats? Please answer yes or no.",
             "answer": "Yes", "category": "count"}, [("Yes.", 1.0), ("no", 0.0)]),
    "mmbench_en_dev_static": ({"index": 4, "question": "Which animal is shown?", "answer": "B", "hint": "nan",
                               "source": "x", "split": "dev", "category": "c", "L2-category": "l2", "A": "cat",
                               "B": "dog", "C": "bird", "D": "nan"}, [("B", 1.0), ("A", 0.0)]),
    "ai2d": ({"question": "Which part is the leaf?", "options": ["root", "leaf", "stem"], "answer": "1"},
             [("B", 1.0), ("A", 0.0)]),  # after its flexible-extract filter (checked below)
    "realworldqa": ({"question": "Which way is the road? A. left B. right C. straight", "answer": "B"},
                    [("B", 1.0), ("The answer is C.", 0.0)]),
}


def build_task(name: str, doc: dict):
    """lmms-eval's ConfigurableTask of the installed task YAML, its dataset replaced by [doc]."""
    import lmms_eval.api.metrics  # noqa: F401  (registers the built-in metrics and aggregations, as the evaluator does)
    from lmms_eval.api.task import ConfigurableTask
    from lmms_eval.utils import load_yaml_config

    config = load_yaml_config(str(task_definition(name).task_yaml), mode="full")
    config.pop("include", None)
    config["process_docs"] = None  # gqa's joins images from the hub; the document here is already joined

    class LocalTask(ConfigurableTask):
        def download(self, dataset_kwargs=None):
            self.dataset = datasets.DatasetDict({self.config.test_split: datasets.Dataset.from_list([doc])})

    return LocalTask(config=config)


def logged_sample(task, doc: dict, answer: str) -> dict:
    """What lmms-eval writes for one document (evaluator._process_document_results), through JSON."""
    from lmms_eval.utils import handle_non_serializable

    metrics = task.process_results(dict(doc), [answer])
    sample = {"doc_id": 0, "doc": doc, "target": task.doc_to_target(doc), "filtered_resps": [answer],
              "token_counts": [None], **metrics}
    return json.loads(json.dumps(sample, default=handle_non_serializable))


@pytest.mark.parametrize("name", sorted(LMMS_EVAL))
def test_each_paper_benchmark_names_a_known_metric_that_its_task_aggregates(name):
    metric = LMMS_EVAL[name]["metric"]
    assert metric in METRICS  # how a sample's score is read, the task's scale
    assert metric in task_definition(LMMS_EVAL[name].get("task", name)).metrics  # lmms-eval's metric_list


def test_the_schema_validates_exactly_the_metrics_the_code_can_read():
    enum = SCHEMA["properties"]["benchmarks"]["additionalProperties"]["properties"]["metric"]["enum"]
    assert enum == list(METRICS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_process_results_give_the_expected_score_and_the_summary_carries_the_metric(name):
    doc, answers = CASES[name]
    metric = PAPER["benchmarks"][name]["metric"]
    task = build_task(name, doc)
    assert metric in {m["metric"] for m in task.config.metric_list}  # a metric the task itself aggregates
    samples = [logged_sample(task, doc, answer) for answer, _ in answers]
    rows = sample_rows(samples, metric)
    assert [row["score"] for row in rows] == pytest.approx([expected for _, expected in answers])
    assert all(0.0 <= row["score"] <= 1.0 for row in rows)

    # lmms-eval's own aggregation of the same per-sample values, as its results JSON reports it
    spec = METRICS[metric]
    aggregate = {
        "ocrbench": lambda values: sum(v["score"] for v in values) / 1000,  # utils: Final_score / 1000
        "mmbench_en_dev_static": lambda values: 100 * np.mean([sample_score(metric, {metric: v}) for v in values]),
    }.get(name, task.aggregation()[metric])
    if name == "mme":  # MME pairs two questions per image: the second one answered right, the first as above
        values = [sample[metric] for sample in samples[:1]] + [{**samples[0][metric], "score": 1.0}]
    else:
        values = [sample[metric] for sample in samples]
    results = {f"{metric},{'flexible-extract' if name == 'ai2d' else 'none'}": aggregate(values),
               f"{metric}_stderr,none": "N/A"}
    record = {"model": "m", "method": "llava_full", "setting_id": "default", "setting": {}, "benchmark": name,
              "kind": "fine", "cluster": None, "n": len(rows), "metrics": {}, "samples": rows,
              "primary_metric": primary_metric(metric, results),
              "checkpoint": {"family": "llava_onevision", "source": "hub", "weights_sha256": "0"},
              "provenance": {"device": "cpu", "versions": {}, "lock": {"sha256": "0" * 64}}}
    row = summary_table([record]).iloc[0]
    assert row["metric"] == metric and row["metric_scale"] == spec.scale
    assert row["accuracy"] == pytest.approx(np.mean([expected for _, expected in answers]))
    assert row["metric_value"] == pytest.approx(spec.factor * next(iter(results.values())))
    if spec.mean and name != "ocrbench":  # a per-sample mean: the metric is the accuracy on its scale
        assert row["metric_value"] == pytest.approx(spec.factor * row["accuracy"])
        assert row["metric_ci_low"] == pytest.approx(spec.factor * row["accuracy_ci_low"])
    elif not spec.mean:
        assert np.isnan(row["metric_ci_low"]) and np.isnan(row["metric_ci_high"])


def test_the_scales_of_corpus_level_aggregates():
    """MME perception: accuracy + accuracy+ per category, summed (0-2000); OCRBench: correct answers of 1000."""
    doc, _ = CASES["mme"]
    task = build_task("mme", doc)
    right, wrong = (task.process_results(dict(doc), [a])["mme_perception_score"] for a in ("yes", "no"))
    both_right = task.aggregation()["mme_perception_score"]([right, right])  # one category: 100 + 100
    one_right = task.aggregation()["mme_perception_score"]([right, wrong])  # 50 + 0
    assert task_value("mme_perception_score", {"mme_perception_score,none": both_right}) == 200.0
    assert task_value("mme_perception_score", {"mme_perception_score,none": one_right}) == 50.0
    assert task_value("ocrbench_accuracy", {"ocrbench_accuracy,none": 0.501}) == pytest.approx(501)
    assert np.isnan(task_value("anls", {"submission,none": None}))


def test_an_mme_cognition_question_has_no_perception_score():
    doc = {**CASES["mme"][0], "category": "code_reasoning", "question_id": "code/1.png"}
    perception_doc = CASES["mme"][0]
    task = build_task("mme", doc)
    samples = [logged_sample(task, doc, "Yes"), logged_sample(task, perception_doc, "Yes")]
    rows = sample_rows(samples, "mme_perception_score")
    assert rows[0]["score"] is None and rows[1]["score"] == 1.0
    record = {"model": "m", "method": "llava_full", "setting_id": "default", "setting": {}, "benchmark": "mme",
              "kind": "coarse", "cluster": None, "n": 2, "metrics": {}, "samples": rows,
              "primary_metric": primary_metric("mme_perception_score", {}),
              "checkpoint": {"family": "llava_next", "source": "hub", "weights_sha256": "0"},
              "provenance": {"device": "cpu", "versions": {}, "lock": {"sha256": "0" * 64}}}
    row = summary_table([record]).iloc[0]
    assert row["n"] == 2 and row["n_scored"] == 1 and row["accuracy"] == 1.0 and np.isnan(row["metric_value"])


def test_ai2d_filter_extracts_the_letter_before_scoring():
    doc, _ = CASES["ai2d"]
    task = build_task("ai2d", doc)
    (extract,) = task._filters
    assert extract.name == "flexible-extract"
    assert extract.filters[0].apply([["B. leaf"]], [doc]) == ["B"]


def test_a_task_that_logs_another_metric_fails_naming_what_it_logs():
    doc, answers = CASES["docvqa_val"]
    task = build_task("docvqa_val", doc)
    samples = [logged_sample(task, doc, answers[0][0])]
    with pytest.raises(EvaluationFailed, match=r"no sample logged metric 'exact_match'.*are: anls$"):
        sample_rows(samples)  # the default metric, exact_match, on DocVQA


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="unknown primary metric 'mme_percept_score'; known: exact_match, anls"):
        primary_metric("mme_percept_score", {})


def mme_tables(metric: str, value: float):
    from visor_model.audit.claims import Tables
    from visor_model.audit.tables import sample_table

    rows = [{"doc_id": i, "answer": "yes", "target": "yes", "score": float(i % 2)} for i in range(10)]
    record = {"model": "llava_next_7b", "method": "hired", "setting_id": "s", "benchmark": "mme", "kind": "coarse",
              "setting": {"budget": 0.2, "alpha": 0.5, "mode": "reference_code", "score": "cls"}, "cluster": None,
              "n": 10, "metrics": {}, "samples": rows,
              "primary_metric": primary_metric(metric, {f"{metric},none": value}),
              "checkpoint": {"family": "llava_next", "source": "hub", "weights_sha256": "0"},
              "provenance": {"device": "cuda", "versions": {}, "lock": {"sha256": "0" * 64}}}
    return Tables(summary_table([record]), sample_table([record]))


def test_the_mme_claim_reads_the_perception_score_on_its_0_2000_scale():
    from visor_model.audit.claims import NOT_TESTABLE, REPRODUCED, audit_claim, load_claims

    claim = {c["id"]: c for c in load_claims(ROOT / "config/claims.yaml")}["hired_mme_20"]
    row = audit_claim(claim, mme_tables("mme_perception_score", 1490.0), "paper")
    assert row["verdict"] == REPRODUCED and row["reproduced_value"] == 1490.0
    assert row["reason"] == ("measured 1490.0 MME perception score (0-2000); the claim needs 1483.0 ± 55.0 MME "
                             "perception score (0-2000)")
    assert "mme_perception_score on the 0-2000 scale" in row["detail"]
    other = audit_claim(claim, mme_tables("mme_cognition_score", 300.0), "paper")
    assert other["verdict"] == NOT_TESTABLE
    assert other["reason"].startswith("the claim is about mme_perception_score, but the primary metric of mme "
                                      "(mme_cognition_score) in this config is another")
