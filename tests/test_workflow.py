"""The Snakemake workflow: the Snakefile checks the config, and an end-to-end run of the micro config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import micro_workdir
from helpers import SNAKEMAKE, snakemake

RUN_TIMEOUT = 1200  # a whole run of the micro config


@pytest.mark.slow
@pytest.mark.parametrize("edit,message", [
    (lambda c: c["methods"]["random_drop"].append({"settings": [{"budget": 1.5}]}),
     "config error at methods.random_drop[1].settings[0].budget: 1.5 is greater than the maximum of 1"),
    (lambda c: c["methods"]["random_drop"].append({"models": ["gpt4"], "settings": [{"budget": 0.5}]}),
     "config error at methods.random_drop[1].models: unknown model 'gpt4'"),
    (lambda c: c["visor"].update(label_per_task=10),
     "config error at benchmarks.synth_background.val: VISOR needs 14 val rows per benchmark"),
], ids=["schema", "unknown-model", "visor"])
def test_snakefile_checks_the_config(tmp_path, edit, message):
    """The Snakefile runs visor_model.workflow_config's checks (every message: tests/test_workflow_config.py)."""
    result = snakemake(micro_workdir(tmp_path, edit), "-n", "reports/final.html", timeout=120)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    workdir = micro_workdir(tmp_path_factory.mktemp("micro"))
    result = snakemake(workdir, "--cores", "2", "reports/final.html", timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


@pytest.mark.slow
def test_micro_run_renders_the_report_with_the_results_table(micro_run):
    html = (micro_run / "reports" / "final.html").read_text()
    assert "Results table" in html and "<table" in html
    summary = pd.read_csv(micro_run / "results" / "summary.csv")
    assert set(summary["benchmark"]) == {"synth_background", "synth_marker"}
    assert {"llava_full", "random_drop", "hired"} <= set(summary["method"])
    assert (summary["n"] == 12).all()
    for column in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "mean_visual_tokens_kept", "checkpoint_sha256"):
        assert summary[column].notna().all(), column


@pytest.mark.slow
def test_micro_run_trains_visor_at_both_budgets_and_the_control(micro_run):
    """The retrain path of VISOR's study: VISOR at the full and the half budget (training curves in
    results/visor_training.csv, half-budget verdicts in the claims table) and the host's continued-training
    control, trained from the host for VISOR's steps and evaluated as llava_full."""
    summary = pd.read_csv(micro_run / "results" / "summary.csv")
    visor = summary[summary["method"] == "visor"]
    assert set(visor["visor_training"]) == {"full", "half"}
    assert (summary[summary["model"] == "reference_ov_continued"]["method"] == "llava_full").all()
    control = json.loads((micro_run / "resources/trained/reference_ov_continued/training.json").read_text())
    assert control["train_config"]["steps"] == 4 and control["control_of"].endswith("reference_ov")
    training = pd.read_csv(micro_run / "results" / "visor_training.csv")
    loss = training[training["metric"] == "loss"]
    assert loss.groupby("training")["step"].max().to_dict() == {"full": 4, "half": 2}
    assert {"host", "sa0"} <= set(training[training["metric"] == "val_accuracy"]["configuration"])
    claims = pd.read_csv(micro_run / "results" / "claims.csv", keep_default_na=False)
    assert (claims[claims["id"] == "visor_saving_without_loss"]["at_half_budget"] != "").all()
    for budget in ("full", "half"):  # the paper's router: cross-entropy on the cheapest configuration that suffices
        final = json.loads((micro_run / f"resources/visor/reference_ov/{budget}/final/visor_config.json").read_text())
        assert final["router_output"] == "cumulative_softmax" and final["training"]["policy"]["router_loss"] == "ce"


@pytest.mark.slow
def test_micro_run_times_every_run_of_a_model_in_one_job(micro_run):
    """One latency record per model, a row per evaluated run (VISOR's viable configurations included), with CIs
    over the repeats and speed-ups paired against llava_full."""
    summary = pd.read_csv(micro_run / "results" / "summary.csv")
    latency = pd.read_csv(micro_run / "results" / "latency.csv")
    key = ["model", "method", "setting_id"]
    assert sorted(p.name for p in (micro_run / "results" / "latency").iterdir()) == [
        "reference_next.json", "reference_ov.json", "reference_ov_continued.json"]
    assert set(map(tuple, latency[key].to_numpy())) == set(map(tuple, summary[key].to_numpy()))
    assert len(latency) == len(latency.drop_duplicates(key))
    assert latency["setting_id"].str.startswith("sa_layers-").any()
    assert (latency["repeats"] == 6).all()
    for column in ("prefill_s_median", "prefill_s_ci_low", "prefill_s_ci_high", "prefill_speedup_ci_low",
                   "decode_speedup_ci_high", "peak_memory_mb", "memory_saving_mb"):
        assert latency[column].notna().all(), column
    assert (latency["prefill_s_ci_low"] <= latency["prefill_s_median"]).all()
    full = latency[latency["method"] == "llava_full"]
    assert (full["prefill_speedup"] == 1).all() and (full["prefill_speedup_ci_low"] == 1).all()


@pytest.mark.slow
def test_rerun_with_nothing_changed_runs_no_job(micro_run):
    result = snakemake(micro_run, "-n", "reports/final.html", timeout=120)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


RESULT_COLUMNS = ["model", "method", "setting_id", "benchmark", "n", "accuracy", "accuracy_ci_low",
                  "accuracy_ci_high", "mean_visual_tokens_kept"]


def default_sigint() -> None:
    """In the child: Ctrl-C's default action. A job started in the background by a non-interactive shell (as CI
    may start this suite) inherits SIGINT ignored, and Python keeps it ignored, so the workflow would not stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_until(workdir: Path, reached, what: str) -> None:
    """Start a `--cores 2` run and stop it with SIGINT (Ctrl-C, to the whole process group) as soon as
    `reached()` holds."""
    process = subprocess.Popen(SNAKEMAKE + ["--directory", str(workdir), "--cores", "2", "reports/final.html"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               preexec_fn=default_sigint)
    deadline = time.time() + 900
    while time.time() < deadline and process.poll() is None and not reached():
        time.sleep(0.05)
    assert process.poll() is None, f"the run finished before it could be interrupted {what}"
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=300)
    assert not (workdir / "results" / "summary.csv").exists()


@pytest.mark.slow
def test_interrupted_fresh_run_resumes_to_identical_results(micro_run, tmp_path):
    """Interrupt a second fresh run during reference training, rerun it and interrupt it again during
    evaluation, then rerun it to the end: training resumes from its last saved step, and the accuracy and
    token tables equal the uninterrupted run's (repeatability and resumption at once)."""
    workdir = micro_workdir(tmp_path)
    state = workdir / "resources" / "train_state" / "reference_ov" / "state.json"
    run_until(workdir, state.is_file, "during training")
    assert not (workdir / "resources" / "trained" / "reference_ov" / "training.json").exists()
    run_until(workdir, lambda: any((workdir / "results" / "eval").rglob("*.json")), "during evaluation")
    result = snakemake(workdir, "--cores", "2", "reports/final.html", timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr[-5000:]
    train_log = (workdir / "logs" / "train_reference" / "reference_ov.log").read_text()
    assert "resuming reference training from step" in train_log
    first = pd.read_csv(micro_run / "results" / "summary.csv")[RESULT_COLUMNS]
    second = pd.read_csv(workdir / "results" / "summary.csv")[RESULT_COLUMNS]
    key = ["model", "method", "setting_id", "benchmark"]
    pd.testing.assert_frame_equal(first.sort_values(key).reset_index(drop=True),
                                  second.sort_values(key).reset_index(drop=True))
    samples = [pd.read_csv(d / "results" / "samples.csv").sort_values(key + ["doc_id"]).reset_index(drop=True)
               for d in (micro_run, workdir)]
    assert samples[0]["answer"].fillna("").tolist() == samples[1]["answer"].fillna("").tolist()
