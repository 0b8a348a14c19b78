"""The report: execute one section notebook with papermill and export it to HTML without code (rule
report_section), or gather the executed sections into reports/final.html with a table of contents (rule report).
"""

import sys
from pathlib import Path

from visor_model.reporting.render import TITLE, execute_section, export, gather

if __name__ == "__main__":
    sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake object)
    if snakemake.rule == "report_section":  # noqa: F821
        inputs = snakemake.input  # noqa: F821
        parameters = {name: str(Path(getattr(inputs, name)).resolve())
                      for name in ("summary", "samples", "latency", "claims", "training")}
        parameters = {f"{name}_path": path for name, path in parameters.items()}
        parameters.update(snakemake.params.parameters)  # noqa: F821
        executed = execute_section(inputs.notebook, Path(snakemake.output.notebook), parameters)  # noqa: F821
        export(executed, Path(snakemake.output.html), f"{TITLE}: {snakemake.wildcards.section}")  # noqa: F821
    else:
        export(gather([Path(p) for p in snakemake.input]), Path(snakemake.output.html))  # noqa: F821
