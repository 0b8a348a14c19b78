"""Resolve a model's checkpoint (shipped, trained here, or hub snapshot), verify it, record its provenance."""

import json
import sys
from pathlib import Path

from visor_model.llava.checkpoints import provide_checkpoint

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
record = provide_checkpoint(snakemake.params.spec, snakemake.params.source, Path(snakemake.params.trained_dir))
tmp = Path(snakemake.output[0] + ".tmp")
tmp.write_text(json.dumps(record, indent=2))
tmp.replace(snakemake.output[0])
print(json.dumps(record, indent=2))
