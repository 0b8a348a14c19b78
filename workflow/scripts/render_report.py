"""Execute the report notebook with papermill and export it to HTML without code."""

import sys
from pathlib import Path

import nbformat
import papermill
from nbconvert import HTMLExporter

from visor_model.files import write_atomically

sys.stdout = sys.stderr = open(snakemake.log[0], "w")
executed = Path(snakemake.output.notebook)
executed.parent.mkdir(parents=True, exist_ok=True)
papermill.execute_notebook(
    snakemake.input.notebook,
    str(executed),
    parameters={"summary_path": str(Path(snakemake.input.summary).resolve()),
                "samples_path": str(Path(snakemake.input.samples).resolve())},
    kernel_name="python3",
    progress_bar=False,
)
html, _ = HTMLExporter(exclude_input=True).from_notebook_node(nbformat.read(executed, as_version=4))
write_atomically(Path(snakemake.output.html), lambda tmp: tmp.write_text(html))
