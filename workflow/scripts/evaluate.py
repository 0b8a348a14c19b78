"""Evaluate one model x method x setting on one benchmark with lmms-eval's evaluator; write a tidy record."""

import json
import shutil
import sys
from pathlib import Path

from lmms_plugins.args import model_args
from lmms_plugins.metrics import primary_metric
from lmms_plugins.run import run_lmms_eval, sample_rows
from visor_model.files import write_json_atomically
from visor_model.provenance import environment

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
wildcards, params = snakemake.wildcards, snakemake.params
checkpoint = json.loads(Path(snakemake.input.checkpoint).read_text())
benchmark, evaluation = params.benchmark, params.evaluation
local = benchmark["source"] in ("synthetic", "rehearsal")  # a task folder made by the workflow, `test` documents
task = benchmark.get("task", wildcards.benchmark)

plugin_args = model_args(checkpoint["path"], params.setting, evaluation)
lmms_dir = Path(params.lmms_dir)
shutil.rmtree(lmms_dir, ignore_errors=True)  # a rerun never mixes with an earlier attempt's files
limit = evaluation["limit"]
output = run_lmms_eval(
    model=wildcards.method,
    model_args=plugin_args,
    task=task,
    output_dir=lmms_dir,
    log_path=Path(snakemake.log[0]),
    include_path=Path(snakemake.input.benchmark[0]).parent if local else benchmark.get("include_path"),
    batch_size=evaluation["batch_size"],
    limit=limit,
    expected_samples=(min(benchmark["test"], limit) if local and limit
                      else (benchmark["test"] if local else None)),
    max_empty_fraction=evaluation["max_empty_fraction"],
    offline=local,
    seed=snakemake.config["seed"],
)
task_results = output.results["results"][task]
primary = primary_metric(benchmark["metric"], task_results)
record = {
    "model": wildcards.model,
    "method": wildcards.method,
    "setting_id": wildcards.setting,
    "setting": params.setting,
    "benchmark": wildcards.benchmark,
    "task": task,
    "kind": benchmark.get("kind"),
    "cluster": benchmark.get("cluster"),
    "metrics": {key.split(",")[0]: value for key, value in task_results.items()
                if "," in key and not key.split(",")[0].endswith("_stderr") and isinstance(value, (int, float))},
    "primary_metric": primary,
    "n": len(output.samples),
    "throughput": output.results.get("throughput", {}),
    "samples": sample_rows(output.samples, primary["name"]),
    "checkpoint": checkpoint,
    "provenance": environment(evaluation["device"]),
    "lmms_eval_results": str(output.results_path),
}
write_json_atomically(Path(snakemake.output[0]), record)
print(json.dumps({k: record[k] for k in (
    "model", "method", "setting_id", "benchmark", "primary_metric", "metrics", "n")}, indent=2))
