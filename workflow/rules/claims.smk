# The claims audit: every claim of the claims YAML (config/claims.yaml unless audit.claims names another)
# measured on the result tables and judged; results/claims.csv, shown at the top of the report.
# results/visor_training.csv (VISOR's training curves and the host's validation accuracy) gates the VISOR
# claims (audit.visor_gate_points); empty where the config trains no VISOR.

CLAIMS_FILE = workflow_config.claims_file(config, workflow.basedir)


rule audit_claims:
    input:
        summary="results/summary.csv",
        samples="results/samples.csv",
        latency="results/latency.csv",
        training="results/visor_training.csv",
        claims=CLAIMS_FILE,
    output:
        "results/claims.csv",
    params:
        profile=config["audit"]["profile"],
        seed=config["seed"],
        resamples=config["audit"]["resamples"],
        visor_gate_points=config["audit"]["visor_gate_points"],
    log:
        "logs/audit_claims.log",
    benchmark:
        "benchmarks/audit_claims.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/audit_claims.py"
