"""Write a benchmark's rehearsal documents and the task YAML that runs lmms-eval's own definition on them."""

import json
import sys
from pathlib import Path

from visor_model.files import write_json_atomically
from visor_model.rehearsal.tasks import write_task

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
folder = Path(snakemake.output[0]).parent
manifest = write_task(snakemake.wildcards.benchmark, snakemake.params.spec, folder, snakemake.params.seed,
                      datasets_cache=Path(snakemake.params.datasets_cache))
write_json_atomically(Path(snakemake.output[0]), manifest)
print(json.dumps(manifest, indent=2))
