"""VISOR in the workflow: the DAG of the default config (shipped VISOR checkpoints, or train_visor -> label_policy
-> train_policy, then provide_visor -> the visor evaluations), the viable-configuration sweep that joins it once
provide_visor has run, and the failure of an sa_layers value the checkpoint has no configuration for. (The VISOR
config checks: tests/test_workflow_config.py.)"""

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
EVALUATE = re.compile(r"wildcards: model=(\w+), method=visor, setting=([\w.-]+)$", re.MULTILINE)  # all benchmarks


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


def visor_evaluations(output: str) -> set[tuple[str, str]]:
    return set(EVALUATE.findall(output))


@pytest.mark.slow
def test_default_dag_provides_the_shipped_visor_and_trains_it_without(tmp_path):
    """The default config evaluates the shipped VISOR checkpoints (full and half budget) without training; with
    nothing shipped, each budget is trained (train_visor -> label_policy -> train_policy -> provide_visor)."""
    config = default_config()
    budgets = {"full", "half"}
    result = snakemake(write_config(tmp_path / "shipped", config), "-n", "reports/final.html")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    counts = job_counts(output)
    assert counts["provide_visor"] == len(budgets) and not {"train_visor", "label_policy", "train_policy"} & set(counts)
    settings = {f"threshold-{t}" for t in THRESHOLDS} | {f"threshold-0.9_token_budget-{b}" for b in ("0.5", "0.25")}
    settings |= {f"threshold-{t}_training-half" for t in ("0.5", "0.9", "0.99")}
    assert visor_evaluations(output) == {(model, setting) for model in config["visor"]["models"]
                                         for setting in settings}
    assert "DAG of jobs will be updated after completion" in output  # the sa_layers sweep follows provide_visor

    config["visor"]["shipped"] = {}
    workdir = write_config(tmp_path / "trained", config)
    result = snakemake(workdir, "-n", "reports/final.html")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    assert {rule: counts[rule] for rule in ("train_visor", "label_policy", "train_policy", "provide_visor")} == {
        rule: len(budgets) for rule in ("train_visor", "label_policy", "train_policy", "provide_visor")}
    graph = snakemake(workdir, "reports/final.html", "--cores", "2", "--rulegraph", "dot")
    assert graph.returncode == 0, graph.stderr[-3000:]
    names = dict(re.findall(r'(\d+)\[label = "(\w+)"', graph.stdout))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(\d+) -> (\d+)", graph.stdout)}
    assert {("train_visor", "label_policy"), ("label_policy", "train_policy"), ("train_visor", "train_policy"),
            ("train_policy", "provide_visor"), ("provide_visor", "evaluate"), ("provide_visor", "aggregate"),
            ("provide_visor", "visor_training_table")} <= edges


@pytest.mark.slow
def test_viable_configurations_join_the_sweep_once_visor_is_provided(tmp_path):
    """Fake a provided full-budget VISOR (viable configurations with 0 and 2 SA layers): the dry run then lists
    sa_layers-0 and sa_layers-2 evaluations (not sa_layers-1) and does not provide it again; the half-budget
    one is still to come."""
    config = default_config()
    workdir = write_config(tmp_path, config)
    inputs = [workdir / f"resources/benchmarks/{b}/manifest.json" for b in config["benchmarks"]]
    inputs += [workdir / f"resources/checkpoints/{m}.json" for m in config["models"]]
    for path in inputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    folder = workdir / "visor_folder"
    folder.mkdir()
    (folder / "visor_config.json").write_text(json.dumps({"visor_config": {}, "viable": [[], [1, 4]], "training": {}}))
    record = workdir / "resources/visor/reference_ov/full/checkpoint.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"path": str(folder)}))
    past = time.time() - 60
    for path in inputs:
        os.utime(path, (past, past))

    result = snakemake(workdir, "-n", "reports/final.html")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    counts = job_counts(output)
    assert counts["provide_visor"] == 1  # the half budget's
    found = {setting for _, setting in visor_evaluations(output)}
    assert {"sa_layers-0", "sa_layers-2"} <= found and "sa_layers-1" not in found
    full = {s for s in found if "training-half" not in s}
    assert len(full) == 2 + len(THRESHOLDS) + 2


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
    record = workdir / "resources/visor/tiny/full/checkpoint.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"path": str(tiny_visor_checkpoint), "source": "train", "family": "llava_onevision",
                                  "weights_sha256": "not checked here"}))

    target = "results/eval/tiny/visor/sa_layers-5/synth_marker.json"
    result = snakemake(workdir, "--cores", "1", target, timeout=600)  # only evaluate runs: its inputs exist
    assert result.returncode != 0
    log = workdir / "logs/evaluate/tiny/visor/sa_layers-5.log"
    message = "no viable VISOR configuration with sa_layers=5; available: [0, 1]"
    assert message in log.read_text()
    assert "logs/evaluate/tiny/visor/sa_layers-5.log" in result.stdout + result.stderr
    assert not (workdir / target).exists()
