"""Time every configured setting of one model side by side in this process (visor_model.efficiency.latency), on all
the cores Snakemake gave the job (it takes them all, so nothing else runs beside it).

Each setting is built by its lmms-eval plugin class with the same model args as `evaluate`
(lmms_plugins.latency.SharedPlugins), so the timed code path (runner, reducer, VISOR configuration or policy) is
the evaluated one; lmms-eval's harness is not run."""

import json
import sys
from pathlib import Path

import torch

from lmms_plugins.args import model_args
from lmms_plugins.latency import SharedPlugins
from visor_model.efficiency.latency import LatencyConfig, TimedSetting, fixed_inputs, measure_latency
from visor_model.files import write_json_atomically

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
params = snakemake.params
latency, evaluation = params.latency, params.evaluation
torch.set_num_threads(snakemake.threads)
config = LatencyConfig(samples=latency["samples"], warmup=latency["warmup"], repeats=latency["repeats"],
                       max_new_tokens=latency["max_new_tokens"], threads=snakemake.threads,
                       image_size=latency.get("image_size"), seed=snakemake.config["seed"])
runs = [{**run, "checkpoint": json.loads(Path(run["checkpoint"]).read_text())} for run in params.runs]
plugins = SharedPlugins([(run["method"], model_args(run["checkpoint"]["path"], run["setting"], evaluation))
                         for run in runs])
settings = [TimedSetting(f"{run['method']}/{run['setting_id']}", plugin.runner, plugin.accountant, plugin.label)
            for run, plugin in zip(runs, plugins.plugins)]
print(f"{snakemake.wildcards.model}: {len(settings)} settings side by side on {torch.get_num_threads()} threads")
record = measure_latency(settings, fixed_inputs(config.samples, config.seed, image_size=config.image_size), config)
plugins.check()
for entry, run in zip(record["settings"], runs):
    entry.update(method=run["method"], setting_id=run["setting_id"], setting=run["setting"],
                 checkpoint=run["checkpoint"])
record["model"] = snakemake.wildcards.model
write_json_atomically(Path(snakemake.output[0]), record)
for entry in record["settings"]:
    prefill, decode = entry["timings"]["prefill_s"], entry["timings"]["decode_per_token_s"]
    print(f"{entry['name']:<40} prefill {prefill['median']:.4g} s [{prefill['ci_low']:.4g}, {prefill['ci_high']:.4g}]"
          f"  decode/token {decode['median']:.4g} s  peak {entry['memory']['peak_mb']:.0f} MB")
