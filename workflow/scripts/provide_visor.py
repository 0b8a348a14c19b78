"""The checkpoint record of a VISOR (trained here, or shipped and verified) that `evaluate` loads for method visor
(visor_model.methods.visor.training.visor_checkpoint_record)."""

import json
import sys
from pathlib import Path

from visor_model.files import write_json_atomically
from visor_model.methods.visor.training import visor_checkpoint_record

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
shipped = snakemake.params.shipped
folder = shipped or Path(snakemake.input.trained[0]).parent
record = visor_checkpoint_record(Path(folder), json.loads(Path(snakemake.input.base).read_text()),
                                 snakemake.params.budget, shipped=bool(shipped))
write_json_atomically(Path(snakemake.output[0]), record)
print(json.dumps(record, indent=2))
