"""Job sizing (visor_model.sizing): jobs per rule as the workflow resolves the config, GPU-hours from the FLOP
model under stated assumptions, measured seconds from Snakemake benchmark files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from visor_model import sizing
from visor_model import workflow_config as wc
from visor_model.efficiency.flops import llm_flops, lm_head_flops, model_prefill_flops

REPO = Path(__file__).resolve().parent.parent


def load(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    return wc.check(config, sizing.SCHEMA, overlay=config, replace_workflow_config=True)


def test_paper_profile_job_counts():
    config = load(REPO / "config" / "paper.yaml")
    runs, _, viable = wc.configured_runs(config)
    rows = sizing.estimate(config)
    # VISOR on the 24-layer Qwen2 host: 8 SA candidates, a family of 9 configurations (the most that are viable)
    assert sizing.visor_family_size(sizing.SHAPES["llava_onevision"]) == 9 and len(viable) == 1
    evaluations = len(runs) + 9
    assert rows["evaluate"]["jobs"] == evaluations  # one per run, for every benchmark
    assert rows["measure_latency"]["jobs"] == len(config["models"]) == 2  # one per model: its settings side by side
    assert {rule: rows[rule]["jobs"] for rule in ("provide_checkpoint", "train_reference", "generate_benchmark",
                                                  "train_visor", "label_policy", "train_policy")} == {
        "provide_checkpoint": 2, "train_reference": 0, "train_visor": 1, "label_policy": 1, "train_policy": 1,
        "generate_benchmark": sum(spec["source"] == "synthetic" for spec in config["benchmarks"].values())}
    assert rows["aggregate"]["gpu_hours"] == 0.0
    assert 10 < rows["evaluate"]["gpu_hours"] < 200  # tens of GPU-hours, not GPU-days
    config["evaluation"]["group_benchmarks"] = False  # a job per benchmark: a start-up per benchmark, not one
    per_benchmark = sizing.estimate(config)["evaluate"]
    benchmarks = len(config["benchmarks"])
    assert per_benchmark["jobs"] == evaluations * benchmarks
    assert per_benchmark["gpu_hours"] - rows["evaluate"]["gpu_hours"] == pytest.approx(
        evaluations * (benchmarks - 1) * 2.0 / 60)


def test_evaluation_hours_are_the_flop_model_over_the_assumed_throughput():
    config = load(REPO / "config" / "paper.yaml")
    config["benchmarks"] = {"docvqa_val": config["benchmarks"]["docvqa_val"]}
    config["methods"] = {"random_drop": [{"models": ["llava_next_7b"], "settings": [{"budget": 0.5, "seed": 0}]}]}
    config["evaluation"]["limit"] = 10
    a = sizing.Assumptions(tflops=100.0, fp32_tflops=10.0, bandwidth_gbs=1000.0, startup_min=3.0)
    shape = sizing.SHAPES["llava_next"]
    n_visual = round(2928 * 0.5)  # a document: NeXT's 2x2 grid, half of its visual tokens kept
    prefill = model_prefill_flops(shape, n_text=64, n_visual=n_visual, n_crops=5).total
    decode = sum(llm_flops(shape.llm, 1, 64 + n_visual + t).total + lm_head_flops(shape.llm, 1).total
                 for t in range(8))
    llm = shape.llm
    weight_bytes = 2 * (llm.n_layers * (2 * llm.hidden * (llm.q_dim + llm.kv_dim) + 3 * llm.hidden * llm.intermediate)
                        + llm.hidden * llm.vocab)
    seconds = (prefill + decode) / 100e12 + 8 * weight_bytes / 1000e9 / config["evaluation"]["batch_size"]
    rows = sizing.estimate(config, a)
    assert rows["evaluate"]["jobs"] == 1
    assert rows["evaluate"]["gpu_hours"] == pytest.approx(3.0 / 60 + 10 * seconds / 3600, rel=1e-12)
    config["evaluation"]["dtype"] = "float32"  # at float32's throughput
    seconds += (prefill + decode) / 10e12 - (prefill + decode) / 100e12
    assert sizing.estimate(config, a)["evaluate"]["gpu_hours"] == pytest.approx(3.0 / 60 + 10 * seconds / 3600)
    config["benchmarks"]["my_docvqa"] = {**config["benchmarks"]["docvqa_val"], "task": "docvqa_val"}
    rows = sizing.estimate(config, a)  # both benchmarks in one job: one start-up
    assert rows["evaluate"]["jobs"] == 1
    assert rows["evaluate"]["gpu_hours"] == pytest.approx(3.0 / 60 + 2 * 10 * seconds / 3600)


def test_an_lmms_eval_task_without_its_size_names_the_missing_keys():
    config = load(REPO / "config" / "paper.yaml")
    config["benchmarks"]["vqav2_val"] = {"source": "lmms_eval", "image": "photo", "metric": "exact_match"}
    with pytest.raises(ValueError, match=r"^config error at benchmarks\.vqav2_val: the sizing tool needs documents "
                                         r"\(the documents it evaluates\)$"):
        sizing.estimate(config)
    config["benchmarks"]["vqav2_val"] = {"source": "rehearsal", "test": 4}  # a rehearsal evaluates `test` documents
    with pytest.raises(ValueError, match=r"benchmarks\.vqav2_val: the sizing tool needs image \(its typical image"):
        sizing.estimate(config)


def test_measured_seconds_from_snakemake_benchmark_files(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for i, seconds in enumerate((10.0, 30.0)):
        path = tmp_path / "evaluate" / "m" / f"{i}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:10\t600\t1\t1\t1\t0\t0\t0\t1\n")
    assert sizing.measured_seconds(tmp_path) == {"evaluate": (2, 20.0)}
    text = sizing.report(load(REPO / "config" / "config.yaml"), sizing.Assumptions(), tmp_path)
    evaluate = next(line for line in text.splitlines() if line.startswith("evaluate"))
    assert evaluate.split()[1:] == ["89", evaluate.split()[2], "20", "(n=2)", f"{89 * 20 / 3600:.2f}"]


@pytest.mark.parametrize("config", ["config/config.yaml", "config/paper.yaml"])
def test_the_command_prints_every_rule(config):
    result = subprocess.run([sys.executable, "-m", "visor_model.sizing", "--configfile", str(REPO / config),
                             "--benchmarks", str(REPO / "no-such-folder")], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    rules = [line.split()[0] for line in result.stdout.splitlines()[1:-1]]
    assert rules == ["generate_benchmark", "train_reference", "provide_checkpoint", "evaluate", "measure_latency",
                     "train_visor", "label_policy", "train_policy", "aggregate", "audit_claims", "report_section",
                     "report", "total"]
    assert "assumed: 200 TFLOP/s achieved at prefill (bf16; float32: 40)" in result.stdout
