"""Audit the claims of the claims YAML against the result tables; write results/claims.csv
(visor_model.audit.claims)."""

import sys
from pathlib import Path

from visor_model.audit.claims import Tables, audit, load_claims
from visor_model.files import write_atomically

sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake object)
inputs, params = snakemake.input, snakemake.params  # noqa: F821
tables = Tables.read(inputs.summary, inputs.samples, inputs.latency, inputs.training, seed=params.seed,
                     resamples=params.resamples)
table = audit(load_claims(inputs.claims), tables, params.profile, gate_points=params.visor_gate_points)
write_atomically(Path(snakemake.output[0]), lambda tmp: table.to_csv(tmp, index=False))  # noqa: F821
print(table[["id", "verdict", "at_half_budget", "reproduced_value", "reason"]].to_string())
