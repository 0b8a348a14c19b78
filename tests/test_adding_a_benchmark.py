"""A built-in lmms-eval task joins the paper sweep through its config entries alone: in copies of config/paper.yaml
and config/rehearsal.yaml, OK-VQA (not one of the papers' benchmarks) gets one entry in each, and the workflow's
config checks, the sizing tool, the rehearsal's task generation and the primary metric take it up; an entry
without a key that one of them needs fails naming the benchmark and the key."""

from __future__ import annotations

import copy

import pytest
import yaml
from helpers import REPO, snakemake

from lmms_plugins.metrics import primary_metric, sample_score
from visor_model import sizing
from visor_model import workflow_config as wc
from visor_model.rehearsal.tasks import task_definition, write_task

NEW = "ok_vqa_val2014"
# what a user writes: the paper profile's entry (the audit's kind and metric, the sizing tool's documents and
# typical sample) and the rehearsal's (the same, with local documents in the task's schema)
PAPER_ENTRY = f"""\
  {NEW}: {{source: lmms_eval, kind: coarse, metric: exact_match, documents: 5046, image: photo, answer_tokens: 3}}
"""
REHEARSAL_ENTRY = f"""\
  {NEW}:
    source: rehearsal
    kind: coarse
    metric: exact_match
    image: photo
    answer_tokens: 3
    test: 3
    rehearsal:
      images: [[640, 480], [500, 375]]
      numbered: [question_id]
      rows:
        - {{question_id: 7, question: "What sport is played here?", answer: tennis,
           answers: [tennis, tennis, tennis, tennis]}}
"""


def with_entry(name: str, entry: str, tmp_path):
    """config/<name>.yaml with `entry` added to its benchmarks, as a file in tmp_path; its path."""
    text = (REPO / "config" / f"{name}.yaml").read_text()
    assert text.count("\nbenchmarks:\n") == 1
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("\nbenchmarks:\n", "\nbenchmarks:\n" + entry))
    return path


def checked(path) -> dict:
    config = yaml.safe_load(path.read_text())
    return wc.check(config, sizing.SCHEMA, overlay=config, replace_workflow_config=True)


@pytest.fixture
def paper(tmp_path):
    return with_entry("paper", PAPER_ENTRY, tmp_path)


@pytest.fixture
def rehearsal(tmp_path):
    return with_entry("rehearsal", REHEARSAL_ENTRY, tmp_path)


def test_the_config_checks_take_the_new_benchmark(paper, rehearsal):
    for path in (paper, rehearsal):
        config = checked(path)
        assert NEW in config["benchmarks"] and config["benchmarks"][NEW]["metric"] == "exact_match"
    # the rehearsal mirrors the paper profile: the same benchmarks, kinds, clusters, metrics and typical samples
    paper_config, rehearsal_config = checked(paper), checked(rehearsal)
    assert list(paper_config["benchmarks"]) == list(rehearsal_config["benchmarks"])
    keys = ("kind", "cluster", "metric", "image", "text_tokens", "answer_tokens")
    assert {k: paper_config["benchmarks"][NEW].get(k) for k in keys} == {
        k: rehearsal_config["benchmarks"][NEW].get(k) for k in keys}


def test_the_sizing_tool_costs_the_new_benchmark(paper):
    config = checked(paper)
    assert sizing.benchmark_profile(NEW, config["benchmarks"][NEW], None) == sizing.BenchmarkProfile(
        5046, "photo", text_tokens=64, answer_tokens=3)
    config["evaluation"]["group_benchmarks"] = False  # a job per benchmark: the new one's jobs and hours add up
    without = copy.deepcopy(config)
    del without["benchmarks"][NEW]
    alone = copy.deepcopy(config)
    alone["benchmarks"] = {NEW: config["benchmarks"][NEW]}
    rows, before, added = (sizing.estimate(c)["evaluate"] for c in (config, without, alone))
    assert rows["jobs"] == before["jobs"] + added["jobs"] and added["jobs"] > 0
    assert rows["gpu_hours"] == pytest.approx(before["gpu_hours"] + added["gpu_hours"])
    assert added["gpu_hours"] > added["jobs"] * sizing.Assumptions.startup_min / 60  # its 5,046 documents cost


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path / "datasets_cache"


def test_the_rehearsal_writes_the_new_task_and_its_metric_reads_the_scores(rehearsal, tmp_path, offline_datasets):
    from lmms_eval.tasks import TaskManager, get_task_dict

    spec = checked(rehearsal)["benchmarks"][NEW]
    folder = tmp_path / "task"
    manifest = write_task(NEW, spec, folder, seed=0, datasets_cache=offline_datasets)
    assert manifest["include"] == str(task_definition(NEW).task_yaml)  # lmms-eval's own definition
    assert (manifest["config_name"], manifest["split"]) == ("default", "val2014")  # read from it
    assert manifest["image_sizes"] == [[640, 480], [500, 375], [640, 480]]
    task = get_task_dict([NEW], TaskManager("WARNING", include_path=str(folder), include_defaults=False))[NEW]
    docs = list(task.test_docs())
    assert [doc["question_id"] for doc in docs] == [7, 8, 9]  # numbered
    assert [image.size for doc in docs for image in task.doc_to_visual(doc)] == [(640, 480), (500, 375), (640, 480)]
    metric = spec["metric"]
    scores = [sample_score(metric, task.process_results(docs[0], [answer])) for answer in ("Tennis", "golf")]
    assert scores == [1.0, 0.0]
    assert primary_metric(metric, {f"{metric},none": 0.5})["value"] == 50.0  # lmms-eval's mean, in points


@pytest.mark.slow
def test_the_rehearsal_workflow_lists_the_new_tasks_jobs(rehearsal, tmp_path):
    result = snakemake(tmp_path, "-n", "--configfile", str(rehearsal), "--replace-workflow-config")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"output: resources/rehearsal/tasks/{NEW}/manifest.json" in result.stdout  # its documents
    assert f"results/eval/llava_ov_0_5b/llava_full/default/{NEW}.json" in result.stdout  # its evaluations


def test_a_missing_key_fails_naming_the_benchmark_and_the_key(paper, rehearsal, tmp_path):
    config = checked(paper)
    del config["benchmarks"][NEW]["documents"]
    with pytest.raises(ValueError, match=rf"^config error at benchmarks\.{NEW}: the sizing tool needs documents "):
        sizing.estimate(config)
    entry = yaml.safe_load(rehearsal.read_text())
    without_rows = copy.deepcopy(entry)
    del without_rows["benchmarks"][NEW]["rehearsal"]["rows"]
    without_documents = copy.deepcopy(entry)
    del without_documents["benchmarks"][NEW]["rehearsal"]
    for config, message in ((without_rows, rf"config error at benchmarks\.{NEW}\.rehearsal: 'rows' is a required"),
                            (without_documents, rf"config error at benchmarks\.{NEW}: 'rehearsal' is a required")):
        with pytest.raises(ValueError, match=message):
            wc.check(config, sizing.SCHEMA, overlay=config, replace_workflow_config=True)
    spec = checked(rehearsal)["benchmarks"][NEW]
    with pytest.raises(ValueError, match=rf"^config error at benchmarks\.{NEW}\.metric: lmms-eval task '{NEW}' has "
                                         "no metric 'anls'; its metrics: exact_match, submission$"):
        write_task(NEW, {**spec, "metric": "anls"}, tmp_path, seed=0, datasets_cache=tmp_path)
    with pytest.raises(ValueError, match=r"^lmms-eval task 'ok_vqa_val2015' is not one built-in task"):
        write_task(NEW, {**spec, "task": "ok_vqa_val2015"}, tmp_path, seed=0, datasets_cache=tmp_path)
    with pytest.raises(ValueError, match=rf"benchmarks\.{NEW}\.rehearsal\.rows\[0\]: KeyError\('j'\) in a string"):
        write_task(NEW, {**spec, "rehearsal": {**spec["rehearsal"], "rows": [{"question": "Q{j}?"}]}}, tmp_path,
                   seed=0, datasets_cache=tmp_path)
    with pytest.raises(ValueError, match=rf"benchmarks\.{NEW}\.rehearsal\.numbered: 'answer' is not an integer"):
        write_task(NEW, {**spec, "rehearsal": {**spec["rehearsal"], "numbered": ["answer"]}}, tmp_path, seed=0,
                   datasets_cache=tmp_path)
