"""Train a reference model from its recipe (the `retrain: true` / `source: train` path), or continue training a
VISOR base as its continued-training control (models.<m>.control_of)."""

import json
import sys
from pathlib import Path

from visor_model.reference.models import ReferenceConfig
from visor_model.reference.recipe import continue_reference, train_reference
from visor_model.train_loop import TrainConfig

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
training = snakemake.params.training
config = TrainConfig(
    steps=training["steps"],
    batch_size=training["batch_size"],
    learning_rate=training["learning_rate"],
    warmup_steps=training.get("warmup_steps", TrainConfig.warmup_steps),
    save_every=training["save_every"],
    threads=snakemake.threads,
    seed=snakemake.params.seed,
)
out_dir = Path(snakemake.output[0]).parent
tasks = [Path(manifest).parent for manifest in snakemake.input.benchmarks]
if snakemake.input.base:
    base = json.loads(Path(snakemake.input.base[0]).read_text())
    continue_reference(Path(base["path"]), tasks, out_dir, Path(snakemake.params.state), config,
                       base_sha256=base["weights_sha256"])
else:
    train_reference(snakemake.params.family, tasks, out_dir, Path(snakemake.params.state),
                    ReferenceConfig(family=snakemake.params.family), config)
