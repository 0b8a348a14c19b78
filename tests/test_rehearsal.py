"""The rehearsal of the paper profile: its checkpoints (hub layout, real image-side geometry, offline loading at
the pinned revision), its tasks (lmms-eval's own definitions on local documents), and a small run of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO, snakemake

from lmms_plugins.metrics import sample_score
from visor_model.rehearsal.checkpoints import GEOMETRIES, sha256, write_rehearsal_checkpoint
from visor_model.rehearsal.tasks import task_definition, write_task

REVISION = "ebc40e18ddc7f38b9b069b32e5f1cbf17642f654"
OV, NEXT = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-v1.6-vicuna-7b-hf"
BENCHMARKS = yaml.safe_load((REPO / "config" / "rehearsal.yaml").read_text())["benchmarks"]
TASKS = [name for name, spec in BENCHMARKS.items() if spec["source"] == "rehearsal"]  # lmms-eval's, rehearsed


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf_cache")
    for real, repo in ((OV, "rehearsal/ov-geometry"), (NEXT, "rehearsal/next-geometry")):
        write_rehearsal_checkpoint(real, repo, REVISION, cache, seed=0)
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    return hub_cache


def test_snapshot_is_in_the_hub_layout(hub_cache):
    root = hub_cache / "models--rehearsal--ov-geometry"
    assert (root / "refs" / "main").read_text() == REVISION
    snapshot = root / "snapshots" / REVISION
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((snapshot / shard).is_symlink() for shard in shards)
    for shard in shards:  # LFS files: blobs named by their sha256
        blob = Path(os.path.realpath(snapshot / shard))
        assert blob.parent == root / "blobs" and blob.name == sha256(blob)
    assert "chat_template" not in json.loads((snapshot / "tokenizer_config.json").read_text())
    assert "selectattr('type', 'equalto', 'image')" in json.loads((snapshot / "chat_template.json").read_text())[
        "chat_template"]


@pytest.mark.parametrize("repo, real, family, per_crop, cls", [
    ("rehearsal/ov-geometry", OV, "llava_onevision", 729, 0), ("rehearsal/next-geometry", NEXT, "llava_next", 576, 1)])
def test_checkpoint_loads_offline_at_the_pinned_revision(offline_hub, repo, real, family, per_crop, cls):
    import torch
    import transformers

    model_class = {"llava_onevision": transformers.LlavaOnevisionForConditionalGeneration,
                   "llava_next": transformers.LlavaNextForConditionalGeneration}[family]
    model = model_class.from_pretrained(repo, revision=REVISION, cache_dir=str(offline_hub), local_files_only=True)
    geometry = GEOMETRIES[real]
    assert model.config.vision_config.image_size == geometry.image_size
    assert model.config.vision_config.patch_size == 14
    assert model.config.image_grid_pinpoints == geometry.image_grid_pinpoints
    assert model.config.vision_feature_layer == geometry.vision_feature_layer
    assert model.config.vision_feature_select_strategy == geometry.vision_feature_select_strategy
    if family == "llava_onevision":
        assert model.config.vision_aspect_ratio == "anyres_max_9"
    side = geometry.image_size
    with torch.no_grad():
        hidden = model.model.vision_tower(torch.zeros(1, 3, side, side)).last_hidden_state
    assert hidden.shape[1] == per_crop + cls  # CLIP's CLS, dropped by the "default" strategy; SigLIP has none

    tokenizer = transformers.AutoTokenizer.from_pretrained(repo, revision=REVISION, cache_dir=str(offline_hub),
                                                           local_files_only=True)
    ids = tokenizer("hello").input_ids
    if family == "llava_next":  # Llama-style: BOS as the tokenizer defines it
        assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token == "<s>"
    else:  # Qwen2-style: no BOS
        assert tokenizer.bos_token is None and ids == tokenizer("hello", add_special_tokens=False).input_ids
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_index


def test_provide_checkpoint_fetches_the_snapshot(offline_hub):
    from visor_model.llava.checkpoints import load_checkpoint, provide_checkpoint

    spec = {"family": "llava_next", "checkpoint": {"source": "hub", "repo": "rehearsal/next-geometry",
                                                  "revision": REVISION, "rehearsal_of": NEXT}}
    record = provide_checkpoint(spec, "hub", Path("unused"))
    assert record["path"] == str(offline_hub / "models--rehearsal--next-geometry" / "snapshots" / REVISION)
    loaded = load_checkpoint("rehearsal/next-geometry", REVISION)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    assert loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "USER: <image>\nWhat is it? ASSISTANT:")


def test_unknown_geometry_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no rehearsal geometry for 'llava-hf/other'"):
        write_rehearsal_checkpoint("llava-hf/other", "rehearsal/x", REVISION, tmp_path, seed=0)


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path / "datasets_cache"


@pytest.mark.parametrize("name", TASKS)
def test_task_docs_load_through_lmms_eval(name, tmp_path, offline_datasets):
    from lmms_eval.tasks import TaskManager, get_task_dict

    documents = 2
    manifest = write_task(name, {**BENCHMARKS[name], "test": documents}, tmp_path / name, seed=0,
                          datasets_cache=offline_datasets)
    task_yaml = yaml.safe_load((tmp_path / name / f"{name}.yaml").read_text())
    assert task_yaml == {"include": str(task_definition(name).task_yaml), "task": name,
                         "dataset_path": manifest["dataset_path"]}
    manager = TaskManager("WARNING", include_path=str(tmp_path / name), include_defaults=False)
    task = get_task_dict([name], manager)[name]
    docs = list(task.test_docs())
    assert len(docs) == documents
    for doc, size in zip(docs, manifest["image_sizes"]):
        assert [image.size for image in task.doc_to_visual(doc)] == [tuple(size)]
        assert task.doc_to_text(doc).strip()
    result = task.process_results(docs[0], ["A"])
    assert result and set(result) <= {metric["metric"] for metric in task.config.metric_list}
    assert 0.0 <= sample_score(BENCHMARKS[name]["metric"], result) <= 1.0  # the primary metric reads its sample


def test_docvqa_pages_have_the_real_sizes(tmp_path, offline_datasets):
    manifest = write_task("docvqa_val", {**BENCHMARKS["docvqa_val"], "test": 4}, tmp_path, seed=0,
                          datasets_cache=offline_datasets)
    assert manifest["image_sizes"] == [[1700, 2200], [2200, 1700], [1760, 2280], [2544, 3296]]


def test_unknown_task_is_refused(tmp_path):
    spec = {**BENCHMARKS["docvqa_val"], "task": "vqav3"}
    with pytest.raises(ValueError, match="lmms-eval task 'vqav3' is not one built-in task"):
        write_task("docvqa_val", spec, tmp_path, seed=0, datasets_cache=tmp_path)


def test_report_says_a_rehearsal_scores_randomly(tmp_path):
    import fake_results

    from visor_model.audit.claims import Tables, audit, load_claims
    from visor_model.reporting import render

    summary, samples, latency = fake_results.tables(n=10)
    paths = {name: tmp_path / f"{name}.csv" for name in ("summary", "samples", "latency", "claims")}
    for name, table in (("summary", summary), ("samples", samples), ("latency", latency)):
        table.to_csv(paths[name], index=False)
    audit(load_claims(REPO / "config" / "claims.yaml"),
          Tables.read(paths["summary"], paths["samples"], paths["latency"], resamples=100),
          "offline").to_csv(paths["claims"], index=False)
    parameters = {f"{name}_path": str(path) for name, path in paths.items()}
    texts = []
    for rehearsal in (True, False):
        parameters.update(profile="offline", config_sha256="ab" * 32, seed=0, resamples=100, rehearsal=rehearsal)
        executed = render.execute_section(str(REPO / "notebooks" / "report.ipynb"),
                                          tmp_path / f"report_{rehearsal}.ipynb", parameters)
        texts.append("".join(str(output.get("data", {}).get("text/markdown", ""))
                             for cell in executed.cells for output in cell.get("outputs", [])))
    assert "every score in this report is random" in texts[0]
    assert "every score in this report is random" not in texts[1]


def small_rehearsal(benchmarks: list[str]) -> dict:
    """config/rehearsal.yaml on `benchmarks` with llava_full on LLaVA-OV only."""
    config = yaml.safe_load((REPO / "config" / "rehearsal.yaml").read_text())
    config["benchmarks"] = {name: {**config["benchmarks"][name], "test": 2} for name in benchmarks}
    config["models"] = {"llava_ov_0_5b": config["models"]["llava_ov_0_5b"]}
    config["methods"] = {"llava_full": config["methods"]["llava_full"]}
    config["visor"] = {"models": []}
    return config


@pytest.mark.slow
def test_small_rehearsal_reaches_the_report(tmp_path):
    """Every benchmark of the paper profile through lmms-eval's own task definition, the aggregation and the report
    (the task-specific paths: textvqa_val and mmbench write submission files, mme scores question pairs, ...)."""
    config = small_rehearsal(TASKS)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path, "--cores", "2", "--configfile", str(tmp_path / "config.yaml"),
                    "--replace-workflow-config", "reports/final.html", timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    html = (tmp_path / "reports" / "final.html").read_text()
    assert "every score in this report is random" in html
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert dict(zip(summary["benchmark"], summary["metric"])) == {
        name: spec["metric"] for name, spec in config["benchmarks"].items()}


def test_rehearsal_config_mirrors_the_paper_profile():
    paper, rehearsal = (yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
                        for name in ("paper", "rehearsal"))
    assert rehearsal["rehearsal"] is True and rehearsal["audit"]["profile"] == "paper"
    assert list(rehearsal["benchmarks"]) == list(paper["benchmarks"])
    for name, spec in paper["benchmarks"].items():  # the audit's keys and the typical sample the sizing tool costs
        keys = ("kind", "cluster", "metric", "image", "text_tokens", "answer_tokens")
        assert {k: rehearsal["benchmarks"][name].get(k) for k in keys} == {k: spec.get(k) for k in keys}, name
        expected_source = "synthetic" if spec["source"] == "synthetic" else "rehearsal"
        assert rehearsal["benchmarks"][name]["source"] == expected_source
    assert set(rehearsal["methods"]) == set(paper["methods"])
    assert rehearsal["visor"]["models"] == paper["visor"]["models"]
    for model, spec in paper["models"].items():
        assert rehearsal["models"][model]["family"] == spec["family"]
        assert rehearsal["models"][model]["checkpoint"]["rehearsal_of"] == spec["checkpoint"]["repo"]
