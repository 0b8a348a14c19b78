"""Profiles and configs beyond the offline default, checked by dry runs (offline, a few seconds each): the paper
profile's DAG, the Slurm executor profile, and adding a benchmark (only its jobs are new)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import micro_workdir
from helpers import REPO, snakemake

PAPER = REPO / "config" / "paper.yaml"


def job_counts(output: str) -> dict:
    """The 'Job stats' table of a dry run."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def jobs(output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run lists."""
    found = []
    for block in re.split(r"\n(?=\[.*\]\n(?:local)?rule )", output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not rule:
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        found.append((rule.group(1),
                      dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {}))
    return found


# --- the paper profile ----------------------------------------------------------------------------------

PAPER_RUNS = {
    # model x method x setting evaluations configured in config/paper.yaml (VISOR's viable fixed
    # configurations come from the trained checkpoint, after train_visor, so a dry run does not list them; hired:
    # + 3 x 2 the ablations of the selection layer, the distribution layer and the head)
    "llava_full": 2, "random_drop": 2 * 2, "hired": 3 * 2 + 2 + 3 + 3 * 2, "visionzip": 3 + 2, "downsample": 2 * 2,
    "visor": 5 + 2, "fastv": 2 * 2, "prumerge": 2,
}


@pytest.mark.slow
def test_paper_profile_resolves_the_whole_dag_offline(tmp_path):
    config = yaml.safe_load(PAPER.read_text())
    assert {"llava_ov_0_5b", "llava_next_7b"} == set(config["models"])
    for model in config["models"].values():
        assert model["checkpoint"]["source"] == "hub" and re.fullmatch(r"[0-9a-f]{40}", model["checkpoint"]["revision"])
    lmms = {name for name, spec in config["benchmarks"].items() if spec["source"] == "lmms_eval"}
    # VISOR's clusters (the papers'; the other benchmarks are reported per benchmark)
    assert {b for b in lmms if config["benchmarks"][b].get("cluster") == "hard"} == {"docvqa_val", "chartqa",
                                                                                     "infovqa_val", "ocrbench"}
    assert {b for b in lmms if config["benchmarks"][b].get("cluster") == "easy"} == {"gqa", "scienceqa_img", "pope"}
    assert config["evaluation"]["device"] == "cuda" and config["evaluation"]["dtype"] == "bfloat16"
    assert config["audit"]["profile"] == "paper"

    result = snakemake(tmp_path, "-n", "--configfile", str(PAPER), "--replace-workflow-config")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sum(PAPER_RUNS.values())
    assert job_counts(result.stdout) == {
        "generate_benchmark": 3, "provide_checkpoint": 2, "evaluate": runs,  # each on every benchmark
        "measure_latency": 2, "train_visor": 1, "label_policy": 1, "train_policy": 1, "aggregate": 1,
        "audit_claims": 1, "report_section": 7, "report": 1, "all": 1, "provide_visor": 1, "visor_training_table": 1,
        "total": runs + 23}
    assert "train_reference" not in result.stdout  # hub checkpoints are fetched, not trained


@pytest.mark.slow
def test_paper_profile_merged_into_the_offline_config_stops_with_the_fix(tmp_path):
    """Snakemake's own merge of --configfile into the workflow's config/config.yaml reaches the check (its
    messages: tests/test_workflow_config.py)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    result = snakemake(tmp_path, "-n", "--configfile", str(PAPER))
    assert result.returncode != 0
    assert "came from the workflow's config/config.yaml" in result.stderr + result.stdout
    assert "--replace-workflow-config" in result.stderr + result.stdout


# --- the Slurm profile ------------------------------------------------------------------------------------

SLURM = REPO / "profiles" / "slurm"


def gpu_rules() -> set[str]:
    """Rules that declare gpu=GPU_PER_JOB in workflow/rules/*.smk."""
    rules = set()
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=(?:rule|checkpoint) )", path.read_text()):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if name and re.search(r"gpu=GPU_PER_JOB", block):
                rules.add(name.group(1))
    return rules


def test_slurm_profile_puts_every_gpu_rule_on_a_gpu_partition():
    profile = yaml.safe_load((SLURM / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "slurm_partition" in profile["default-resources"]
    rules = gpu_rules()
    assert {"evaluate", "measure_latency", "train_visor"} <= rules
    for rule in rules:
        resources = profile["set-resources"].get(rule, {})
        assert resources.get("gpu") == 1 and resources.get("slurm_partition") == "gpu", rule


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm is not installed "
                           "(pip install snakemake-executor-plugin-slurm)")
def test_slurm_profile_dry_run(tmp_path):
    result = snakemake(tmp_path, "-n", "--workflow-profile", str(SLURM), "--configfile", str(PAPER),
                       "--replace-workflow-config")
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = result.stdout.split("\n\n")
    evaluate = next(b for b in blocks if "rule evaluate:" in b)
    assert "slurm_partition=gpu" in evaluate and "gpu=1" in evaluate
    aggregate = next(b for b in blocks if "rule aggregate:" in b)
    assert "slurm_partition=cpu" in aggregate and "gpu=" not in aggregate


# --- adding a benchmark -----------------------------------------------------------------------------------

def complete_fake_run(workdir: Path, rounds: int = 4) -> None:
    """Make `workdir` look like a finished run without running anything: write a placeholder for every missing
    output a dry run lists (a trained VISOR with viable configurations of 0 and 2 SA layers, its record naming its
    final folder), let Snakemake
    record its metadata (--touch), and repeat until no output is missing. The dry runs force `aggregate`, so
    that the evaluations of the viable configurations (known once the VISOR checkpoint exists) are listed."""
    stamp = time.time()
    for _ in range(rounds):
        result = snakemake(workdir, "-n", "--forcerun", "aggregate", "--", "reports/final.html")
        assert result.returncode == 0, result.stderr[-3000:]
        outputs = [o.strip() for line in result.stdout.splitlines() if line.strip().startswith("output:")
                   for o in line.split("output:", 1)[1].split(",")]
        missing = [o for o in outputs if not (workdir / o).exists()]
        if not missing:
            break
        for output in missing:
            path = workdir / output
            path.parent.mkdir(parents=True, exist_ok=True)
            if output.endswith("/visor_config.json"):  # universal and final VISOR checkpoints
                path.write_text(json.dumps({"viable": [[], [1, 4]]}))
            elif output.startswith("resources/visor/") and output.endswith("/checkpoint.json"):  # provide_visor's
                path.write_text(json.dumps({"path": str(path.parent / "final")}))
            else:
                path.write_text("{}\n")
        for folder in ("resources", "results", "reports"):
            for path in (workdir / folder).rglob("*"):
                if path.is_file():
                    os.utime(path, (stamp, stamp))
        touched = snakemake(workdir, "--touch", "--forceall", "--cores", "1", "reports/final.html")
        assert touched.returncode == 0, touched.stderr[-3000:]
    else:
        raise AssertionError("the fake run did not complete")
    result = snakemake(workdir, "-n", "reports/final.html")
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "per-benchmark"])
def test_adding_a_benchmark_reruns_only_its_evaluations(tmp_path, grouped):
    """Only the evaluations (and what gathers them) run again: with evaluation.group_benchmarks (the default)
    every evaluate job, each on all benchmarks; with one job per benchmark only the new benchmark's."""
    workdir = micro_workdir(tmp_path, lambda config: config["evaluation"].update(group_benchmarks=grouped))
    complete_fake_run(workdir)
    evaluated = {tuple(p.relative_to(workdir / "results" / "eval").parts[:3])
                 for p in (workdir / "results" / "eval").rglob("*.json")}
    assert any(setting.startswith("sa_layers-") for _, _, setting in evaluated)  # the viable configurations

    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["benchmarks"]["synth_shape"] = {"source": "synthetic", "kind": "medium", "cluster": "easy", "test": 12}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", "reports/final.html")
    assert result.returncode == 0, result.stderr[-3000:]
    listed = jobs(result.stdout)
    rules = Counter(rule for rule, _ in listed)
    assert set(rules) == {"generate_benchmark", "evaluate", "aggregate", "audit_claims", "report_section", "report"}
    assert [w for rule, w in listed if rule == "generate_benchmark"] == [{"benchmark": "synth_shape"}]
    new_evaluations = {(w["model"], w["method"], w["setting"]) for rule, w in listed if rule == "evaluate"}
    assert all(w.get("benchmark") == (None if grouped else "synth_shape") for rule, w in listed if rule == "evaluate")
    assert new_evaluations == evaluated  # every model x method x setting
