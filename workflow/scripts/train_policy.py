"""Router training on the policy labels: the final VISOR checkpoint folder (visor_model.methods.visor.training.
train_policy)."""

import sys
from pathlib import Path

from visor_model.methods.visor.config import visor_options
from visor_model.methods.visor.training import train_policy

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
_, _, policy, device = visor_options(snakemake.params.options)
final_dir = Path(snakemake.output[0]).parent
train_policy(
    Path(snakemake.input.universal).parent,
    Path(snakemake.input.labels),
    [Path(manifest).parent for manifest in snakemake.input.benchmarks],
    final_dir,
    policy,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    device=device,
)
