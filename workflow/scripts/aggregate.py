"""Gather every evaluation record into results/summary.csv (a row per model x method x setting x benchmark)
and results/samples.csv (a row per sample), and the latency records (one per model, its settings timed side by
side) into results/latency.csv (a row per model x method x setting)."""

import json
import sys
from pathlib import Path

from visor_model.audit.tables import latency_table, sample_table, summary_table
from visor_model.files import write_atomically

sys.stdout = sys.stderr = open(snakemake.log[0], "w")


def read(paths, folder):
    """The records among `paths` (inputs may also name a VISOR checkpoint file the DAG waited for)."""
    return [json.loads(Path(path).read_text()) for path in paths if Path(path).parts[:2] == ("results", folder)]


records = read(snakemake.input, "eval")
summary = summary_table(records, seed=snakemake.config["seed"])
write_atomically(Path(snakemake.output.csv), lambda tmp: summary.to_csv(tmp, index=False))
samples = sample_table(records)
write_atomically(Path(snakemake.output.samples), lambda tmp: samples.to_csv(tmp, index=False))
latency = latency_table(read(snakemake.input, "latency"))
write_atomically(Path(snakemake.output.latency), lambda tmp: latency.to_csv(tmp, index=False))
print(summary[["model", "method", "setting_id", "benchmark", "n", "accuracy"]].to_string())
print(latency.to_string())
