"""The Snakemake workflow: config validation messages, and an end-to-end run of the micro config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import micro_workdir

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKEMAKE + ["--directory", str(workdir), *args], capture_output=True, text=True,
                          timeout=timeout)


def set_in(path, value):
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


BAD_CONFIGS = [
    (set_in(["evaluation", "bacth_size"], 4), "config error at evaluation: Additional properties are not allowed ('bacth_size' was unexpected)"),
    (set_in(["seed"], "zero"), "config error at seed: 'zero' is not of type 'integer'"),
    (set_in(["methods", "random_drop"], [{"settings": [{"budget": 0}]}]), "config error at methods.random_drop[0].settings[0].budget: 0 is less than or equal to the minimum of 0"),
    (set_in(["methods", "random_drop"], [{"settings": [{"budget": 1.5}]}]), "config error at methods.random_drop[0].settings[0].budget: 1.5 is greater than the maximum of 1"),
    (set_in(["methods", "random_drop"], [{"settings": [{"budget": -1}]}]), "config error at methods.random_drop[0].settings[0].budget: -1 is less than or equal to the minimum of 0"),
    (set_in(["methods", "random_drop"], [{"settings": [{"budget": "abc"}]}]), "config error at methods.random_drop[0].settings[0].budget: 'abc' is not of type 'number'"),
    (set_in(["methods", "visor"], [{"settings": [{"threshold": 1.2}]}]), "config error at methods.visor[0].settings[0].threshold: 1.2 is greater than the maximum of 1"),
    (set_in(["methods", "fastv"], [{"settings": [{}]}]), "config error at methods: 'fastv' is not one of"),
    (set_in(["models", "reference_ov", "family"], "llava_15"), "config error at models.reference_ov.family: 'llava_15' is not one of"),
    (set_in(["methods", "random_drop"], [{"models": ["gpt4"], "settings": [{"budget": 0.5}]}]), "config error at methods.random_drop[0].models: unknown model 'gpt4'"),
    (set_in(["benchmarks"], {}), "config error at benchmarks: {} should be non-empty"),
    (set_in(["models", "reference_next", "checkpoint"], {"source": "hub", "repo": "llava-hf/llava-v1.6-vicuna-7b-hf", "revision": "main"}), "config error at models.reference_next.checkpoint.revision: 'main' does not match"),
]


@pytest.mark.parametrize("edit,message", BAD_CONFIGS, ids=[m.split(":")[0].removeprefix("config error at ") + str(i) for i, (_, m) in enumerate(BAD_CONFIGS)])
def test_bad_config_names_the_key(tmp_path, edit, message):
    result = snakemake(micro_workdir(tmp_path, edit), "-n", "reports/final.html", timeout=120)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    workdir = micro_workdir(tmp_path_factory.mktemp("micro"))
    result = snakemake(workdir, "--cores", "2", "reports/final.html")
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_micro_run_renders_the_report_with_the_results_table(micro_run):
    html = (micro_run / "reports" / "final.html").read_text()
    assert "Results table" in html and "<table" in html
    summary = pd.read_csv(micro_run / "results" / "summary.csv")
    assert set(summary["benchmark"]) == {"synth_background", "synth_marker"}
    assert {"llava_full", "random_drop", "hired"} <= set(summary["method"])
    assert (summary["n"] == 12).all()
    for column in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "mean_visual_tokens_kept", "checkpoint_sha256"):
        assert summary[column].notna().all(), column


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


def test_interrupted_fresh_run_resumes_to_identical_results(micro_run, tmp_path):
    """Interrupt a second fresh run during reference training, rerun it and interrupt it again during
    evaluation, then rerun it to the end: training resumes from its last saved step, and the accuracy and
    token tables equal the uninterrupted run's (repeatability and resumption at once)."""
    workdir = micro_workdir(tmp_path)
    state = workdir / "resources" / "train_state" / "reference_ov" / "state.json"
    run_until(workdir, state.is_file, "during training")
    assert not (workdir / "resources" / "trained" / "reference_ov" / "training.json").exists()
    run_until(workdir, lambda: any((workdir / "results" / "eval").rglob("*.json")), "during evaluation")
    result = snakemake(workdir, "--cores", "2", "reports/final.html")
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
