"""Measure the synchronised latency of one model x method x setting on fixed inputs (visor_model.efficiency.latency).

The method is built by its lmms-eval plugin class with the same model args as `evaluate`, so the timed code
path (runner, reducer, VISOR configuration or policy) is the evaluated one; lmms-eval's harness is not run."""

import json
import sys
from pathlib import Path

import torch
from lmms_eval.models import get_model

from lmms_plugins.args import model_args
from visor_model.efficiency.latency import LatencyConfig, fixed_inputs, measure_latency
from visor_model.files import write_json_atomically

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
wildcards, params = snakemake.wildcards, snakemake.params
checkpoint = json.loads(Path(snakemake.input.checkpoint).read_text())
latency, evaluation = params.latency, params.evaluation
torch.set_num_threads(snakemake.threads)
config = LatencyConfig(samples=latency["samples"], warmup=latency["warmup"], repeats=latency["repeats"],
                       max_new_tokens=latency["max_new_tokens"], threads=snakemake.threads,
                       image_size=latency.get("image_size"), seed=snakemake.config["seed"])
plugin_args = model_args(checkpoint["path"], params.setting, evaluation)
plugin = get_model(wildcards.method)(**plugin_args)
inputs = fixed_inputs(config.samples, config.seed, image_size=config.image_size)
record = measure_latency(plugin.runner, plugin.accountant, inputs, config, label=plugin.label)
record.update(model=wildcards.model, method=wildcards.method, setting_id=wildcards.setting, setting=params.setting,
              checkpoint=checkpoint)
write_json_atomically(Path(snakemake.output[0]), record)
print(json.dumps({k: record[k] for k in ("model", "method", "setting_id", "timings", "memory")}, indent=2))
