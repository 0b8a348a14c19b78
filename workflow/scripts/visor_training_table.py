"""VISOR's training curves and validation accuracy, from every provided VISOR checkpoint, into
results/visor_training.csv (visor_model.audit.tables.visor_training_table)."""

import json
import sys
from pathlib import Path

from visor_model.audit.tables import visor_training_table
from visor_model.files import write_atomically
from visor_model.methods.visor.modeling import VISOR_CONFIG

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
trainings = []
for path in snakemake.input:
    record = json.loads(Path(path).read_text())
    model, budget = Path(path).parts[-3:-1]  # resources/visor/{model}/{budget}/checkpoint.json
    trainings.append((model, budget, json.loads((Path(record["path"]) / VISOR_CONFIG).read_text())["training"]))
table = visor_training_table(trainings)
write_atomically(Path(snakemake.output[0]), lambda tmp: table.to_csv(tmp, index=False))
print(table.groupby(["model", "training", "metric"]).size().to_string())
