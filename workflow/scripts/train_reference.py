"""Train a reference model from its recipe (the `retrain: true` / `source: train` path)."""

import sys
from pathlib import Path

from visor_model.reference.models import ReferenceConfig
from visor_model.reference.recipe import train_reference
from visor_model.training import TrainConfig

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
training = snakemake.params.training
config = TrainConfig(
    steps=training["steps"],
    batch_size=training["batch_size"],
    learning_rate=training["learning_rate"],
    save_every=training["save_every"],
    threads=snakemake.threads,
    seed=snakemake.params.seed,
)
out_dir = Path(snakemake.output[0]).parent
train_reference(
    snakemake.params.family,
    [Path(manifest).parent for manifest in snakemake.input],
    out_dir,
    Path(snakemake.params.state),
    ReferenceConfig(family=snakemake.params.family),
    config,
)
