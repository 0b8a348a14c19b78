"""Write one synthetic benchmark as a self-contained lmms-eval task folder."""

import sys
from pathlib import Path

from visor_model.reference.tasks import write_task

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
spec = snakemake.params.spec
splits = {split: spec[split] for split in ("train", "val", "test") if spec.get(split, 0) > 0}
write_task(snakemake.wildcards.benchmark, Path(snakemake.output[0]).parent, splits, seed=snakemake.params.seed)
print(f"wrote {snakemake.wildcards.benchmark}: {splits}")
