"""Universal VISOR training (stages 1 + 2, resumable) and its viable configurations: a VISOR checkpoint
folder without a router (visor_model.methods.visor.training.train_universal_checkpoint)."""

import json
import sys
from pathlib import Path

from visor_model.methods.visor.config import visor_options
from visor_model.methods.visor.training import train_universal_checkpoint

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
base = json.loads(Path(snakemake.input.checkpoint).read_text())
budget = snakemake.wildcards.budget
universal, architecture, policy, device = visor_options(snakemake.params.options, snakemake.params.seed,
                                                        snakemake.threads)
train_universal_checkpoint(
    base["path"],
    [Path(manifest).parent for manifest in snakemake.input.benchmarks],
    Path(snakemake.output[0]).parent,
    Path(snakemake.params.state),
    universal,
    architecture,
    policy,
    device=device,
    base_sha256=base["weights_sha256"],  # recorded once by provide_checkpoint
    budget={"name": budget, "fraction": snakemake.config["visor"]["budgets"][budget]},
)
