"""VISOR in the workflow: the DAG of the default config (train_visor -> label_policy -> train_policy -> the
visor evaluations), the viable-configuration sweep that joins it once train_visor has run, and the failure of
an sa_layers value the checkpoint has no configuration for. (The VISOR config checks: tests/test_workflow_config.py.)"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, snakemake

THRESHOLDS = ["0.5", "0.7", "0.9", "0.95", "0.99"]
EVALUATE = re.compile(r"wildcards: model=(\w+), method=visor, setting=([\w.-]+), benchmark=(\w+)")


def write_config(workdir: Path, config: dict) -> Path:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def default_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for model in config["models"].values():
        if "path" in model["checkpoint"]:
            model["checkpoint"]["path"] = str((REPO / model["checkpoint"]["path"]).resolve())
    return config


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run (the last one printed)."""
    table = output[output.rindex("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def visor_evaluations(output: str) -> set[tuple[str, str, str]]:
    return set(EVALUATE.findall(output))


@pytest.mark.slow
def test_default_dag_trains_labels_and_routes_before_the_visor_sweep(tmp_path):
    config = default_config()
    workdir = write_config(tmp_path, config)
    result = snakemake(workdir, "-n", "reports/final.html")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    counts = job_counts(output)
    assert ({counts[rule] for rule in ("train_visor", "label_policy", "train_policy")}
            == {len(config["visor"]["models"])})
    settings = {f"threshold-{t}" for t in THRESHOLDS} | {f"threshold-0.9_token_budget-{b}" for b in ("0.5", "0.25")}
    assert visor_evaluations(output) == {(model, setting, benchmark) for model in config["visor"]["models"]
                                         for setting in settings for benchmark in config["benchmarks"]}
    assert "DAG of jobs will be updated after completion" in output  # the sa_layers sweep follows train_visor

    graph = snakemake(workdir, "reports/final.html", "--rulegraph", "dot")
    assert graph.returncode == 0, graph.stderr[-3000:]
    names = dict(re.findall(r'(\d+)\[label = "(\w+)"', graph.stdout))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(\d+) -> (\d+)", graph.stdout)}
    assert {("train_visor", "label_policy"), ("label_policy", "train_policy"), ("train_visor", "train_policy"),
            ("train_policy", "evaluate"), ("train_visor", "aggregate")} <= edges


@pytest.mark.slow
def test_viable_configurations_join_the_sweep_once_train_visor_has_run(tmp_path):
    """Fake a finished train_visor (viable configurations with 0 and 2 SA layers): the dry run then lists
    sa_layers-0 and sa_layers-2 evaluations (not sa_layers-1) and does not retrain."""
    config = default_config()
    workdir = write_config(tmp_path, config)
    inputs = [workdir / f"resources/benchmarks/{b}/manifest.json" for b in config["benchmarks"]]
    inputs += [workdir / f"resources/checkpoints/{m}.json" for m in config["models"]]
    for path in inputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    past = time.time() - 60
    for path in inputs:
        os.utime(path, (past, past))
    universal = workdir / "resources/visor/reference_ov/universal/visor_config.json"
    universal.parent.mkdir(parents=True)
    universal.write_text(json.dumps({"visor_config": {}, "viable": [[], [1, 4]], "training": {}}))

    result = snakemake(workdir, "-n", "reports/final.html")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    counts = job_counts(output)
    assert "train_visor" not in counts and counts["label_policy"] == counts["train_policy"] == 1
    found = {setting for _, setting, _ in visor_evaluations(output)}
    assert {"sa_layers-0", "sa_layers-2"} <= found and "sa_layers-1" not in found
    assert len(visor_evaluations(output)) == (2 + len(THRESHOLDS) + 2) * len(config["benchmarks"])


@pytest.fixture(scope="module")
def tiny_visor_checkpoint(tmp_path_factory):
    """A saved VISOR checkpoint on a tiny 2-layer host: viable configurations with 0 and 1 SA layers."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import save_checkpoint, tiny_config

    from visor_model.methods.visor.modeling import VisorConfig, VisorModel, save_visor
    from visor_model.reference import tasks
    from visor_model.reference.models import build_reference_model, build_tokenizer

    tokenizer = build_tokenizer(tasks.vocabulary())
    model, processor = build_reference_model(tiny_config("llava_onevision"), tokenizer, seed=0)
    root = tmp_path_factory.mktemp("visor")
    save_checkpoint(model, tokenizer, processor, root / "base")
    visor = VisorModel(model, VisorConfig(n_layers=2))
    visor.set_viable(visor.config.family())
    save_visor(visor, root / "visor", tokenizer, processor, {"note": "test"})
    return root / "visor"


@pytest.mark.slow
def test_unknown_sa_layers_fails_naming_the_value_and_the_viable_ones(tmp_path, tiny_visor_checkpoint):
    from visor_model.methods.visor.training import visor_checkpoint_record
    from visor_model.reference import tasks

    config = {
        "seed": 0,
        "benchmarks": {"synth_marker": {"source": "synthetic", "kind": "fine", "train": 4, "val": 2, "test": 4}},
        "models": {"tiny": {"family": "llava_onevision", "checkpoint": {"source": "train"}}},
        "methods": {"visor": [{"settings": [{"sa_layers": 5}]}]},
        "visor": {"models": ["tiny"], "viable_per_task": 1, "label_per_task": 1},
        "evaluation": {"batch_size": 4, "device": "cpu"},
    }
    workdir = write_config(tmp_path, config)
    tasks.write_task("synth_marker", workdir / "resources/benchmarks/synth_marker",
                          {"train": 4, "val": 2, "test": 4}, seed=0)
    record = workdir / "resources/visor/tiny/checkpoint.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(visor_checkpoint_record(tiny_visor_checkpoint, {"path": "base"})))

    target = "results/eval/tiny/visor/sa_layers-5/synth_marker.json"
    result = snakemake(workdir, "--cores", "1", target, timeout=600)  # only evaluate runs: its inputs exist
    assert result.returncode != 0
    log = workdir / "logs/evaluate/tiny/visor/sa_layers-5/synth_marker.log"
    message = "no viable VISOR configuration with sa_layers=5; available: [0, 1]"
    assert message in log.read_text()
    assert "logs/evaluate/tiny/visor/sa_layers-5/synth_marker.log" in result.stdout + result.stderr
    assert not (workdir / target).exists()
