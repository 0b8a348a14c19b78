"""Write a model's random-weight rehearsal checkpoint into the rehearsal's HF cache (hub layout, pinned revision)."""

import json
import sys
from pathlib import Path

from visor_model.files import write_json_atomically
from visor_model.rehearsal.checkpoints import write_rehearsal_checkpoint

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
checkpoint = snakemake.params.spec
record = write_rehearsal_checkpoint(checkpoint["rehearsal_of"], checkpoint["repo"], checkpoint["revision"],
                                    Path(snakemake.params.cache), snakemake.params.seed)
write_json_atomically(Path(snakemake.output[0]), record)
print(json.dumps(record, indent=2))
