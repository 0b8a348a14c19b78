"""Evaluate one model x method x setting on the job's benchmarks (every configured one, or one:
evaluation.group_benchmarks) with lmms-eval's evaluator, the model loaded once; write a tidy record per benchmark."""

import json
import shutil
import sys
from pathlib import Path

from lmms_plugins.args import model_args
from lmms_plugins.metrics import primary_metric
from lmms_plugins.run import EvaluationFailed, TaskRun, run_lmms_eval_tasks, sample_rows
from visor_model.files import write_json_atomically
from visor_model.provenance import environment

log_path = Path(snakemake.log[0])
log_path.write_text("")  # then appended to, here and by the evaluator (which opens it again)
sys.stdout = sys.stderr = open(log_path, "a")
wildcards, params = snakemake.wildcards, snakemake.params
checkpoint = json.loads(Path(snakemake.input.checkpoint).read_text())
benchmarks, evaluation = params.benchmarks, params.evaluation  # benchmark name -> its config entry
limit = evaluation["limit"]

runs, local = [], {}
for name, benchmark in benchmarks.items():
    local[name] = params.task_folders[name] is not None  # a task folder made by the workflow, `test` documents
    lmms_dir = Path(params.lmms_dir) / name
    shutil.rmtree(lmms_dir, ignore_errors=True)  # a rerun never mixes with an earlier attempt's files
    runs.append(TaskRun(
        task=benchmark.get("task", name),
        output_dir=lmms_dir,
        include_path=Path(params.task_folders[name]) if local[name] else benchmark.get("include_path"),
        expected_samples=(min(benchmark["test"], limit) if limit else benchmark["test"]) if local[name] else None,
    ))
outputs = run_lmms_eval_tasks(
    model=wildcards.method,
    model_args=model_args(checkpoint["path"], params.setting, evaluation),
    tasks=runs,
    log_path=log_path,
    batch_size=evaluation["batch_size"],
    limit=limit,
    max_empty_fraction=evaluation["max_empty_fraction"],
    offline=all(local.values()),
    seed=snakemake.config["seed"],
)
for (name, benchmark), run, output, path in zip(benchmarks.items(), runs, outputs, snakemake.output, strict=True):
    task_results = output.results["results"][run.task]
    primary = primary_metric(benchmark["metric"], task_results)
    try:
        rows = sample_rows(output.samples, primary["name"])
    except EvaluationFailed as error:  # name the benchmark: the job evaluates several
        raise EvaluationFailed(f"{name}: {error}") from None
    record = {
        "model": wildcards.model,
        "method": wildcards.method,
        "setting_id": wildcards.setting,
        "setting": params.setting,
        "benchmark": name,
        "task": run.task,
        "kind": benchmark.get("kind"),
        "cluster": benchmark.get("cluster"),
        "metrics": {key.split(",")[0]: value for key, value in task_results.items()
                    if "," in key and not key.split(",")[0].endswith("_stderr") and isinstance(value, (int, float))},
        "primary_metric": primary,
        "n": len(output.samples),
        "throughput": output.results.get("throughput", {}),
        "samples": rows,
        "checkpoint": checkpoint,
        "provenance": environment(evaluation["device"]),
        "lmms_eval_results": str(output.results_path),
    }
    write_json_atomically(Path(path), record)
    print(json.dumps({k: record[k] for k in (
        "model", "method", "setting_id", "benchmark", "primary_metric", "metrics", "n")}, indent=2))
