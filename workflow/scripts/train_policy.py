"""Router training on the policy labels: the final VISOR checkpoint folder and its checkpoint record
(visor_model.methods.visor.training.train_policy, visor_checkpoint_record)."""

import json
import sys
from pathlib import Path

from visor_model.files import write_json_atomically
from visor_model.methods.visor.config import visor_options
from visor_model.methods.visor.training import train_policy, visor_checkpoint_record

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
_, _, policy, device = visor_options(snakemake.params.options)
final_dir = Path(snakemake.output.final).parent
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
record = visor_checkpoint_record(final_dir, json.loads(Path(snakemake.input.base).read_text()))
write_json_atomically(Path(snakemake.output.record), record)
print(json.dumps(record, indent=2))
