"""Policy labels: every viable configuration of the universal VISOR checkpoint on the labelling split
(visor_model.methods.visor.training.label_policy)."""

import sys
from pathlib import Path

from visor_model.methods.visor.config import visor_options
from visor_model.methods.visor.training import label_policy

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
_, _, policy, device = visor_options(snakemake.params.options)
label_policy(
    Path(snakemake.input.universal).parent,
    [Path(manifest).parent for manifest in snakemake.input.benchmarks],
    Path(snakemake.output[0]),
    policy,
    snakemake.threads,
    device,
)
