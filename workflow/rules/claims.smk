# The claims audit: every claim of the claims YAML (config/claims.yaml unless audit.claims names another)
# measured on the result tables and judged; results/claims.csv, shown at the top of the report.

CLAIMS_FILE = config["audit"]["claims"] or f"{workflow.basedir}/config/claims.yaml"


rule audit_claims:
    input:
        summary="results/summary.csv",
        samples="results/samples.csv",
        latency="results/latency.csv",
        claims=CLAIMS_FILE,
    output:
        "results/claims.csv",
    params:
        profile=config["audit"]["profile"],
        seed=config["seed"],
        resamples=config["audit"]["resamples"],
    log:
        "logs/audit_claims.log",
    benchmark:
        "benchmarks/audit_claims.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/audit_claims.py"


def check_paper_profile():
    """`--configfile config/paper.yaml` without --replace-workflow-config merges it into config/config.yaml:
    the offline reference models and synthetic benchmarks would join the paper profile's run. Stop and say so."""
    overlay = workflow.config_settings.overwrite_config or {}
    if config["audit"]["profile"] != "paper" or workflow.config_settings.replace_workflow_config:
        return
    for key in ("models", "benchmarks"):
        extra = sorted(set(config[key]) - set(overlay.get(key, config[key])))
        if extra:
            raise ValueError(
                f"config error at {key}: {', '.join(extra)} came from the workflow's config/config.yaml, merged with "
                f"the --configfile of the paper profile; run with --replace-workflow-config to use only that file")


check_paper_profile()
