# VISOR / HiRED audit: `snakemake --cores all reports/final.html` (offline default: config/config.yaml).
# Rules and input functions live in workflow/rules/*.smk; the config logic they call (checks, configured runs)
# in visor_model/workflow_config.py.
from snakemake.utils import min_version

min_version("9.27")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/rehearsal.smk"
include: "workflow/rules/checkpoints.smk"
include: "workflow/rules/visor.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/efficiency.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "reports/final.html",
