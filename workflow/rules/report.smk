# Tidy results and the HTML report: papermill notebooks (notebooks/<section>.ipynb, reading result tables only)
# executed and rendered without code to reports/<section>.html, then gathered into reports/final.html.


rule aggregate:
    input:
        # evaluation records (results/eval/...) and latency records (results/latency/...); aggregate.py tells
        # them apart by folder
        evaluation_outputs() + latency_outputs(),
    output:
        csv="results/summary.csv",
        samples="results/samples.csv",
        latency="results/latency.csv",
    params:
        benchmarks=config["benchmarks"],
    log:
        "logs/aggregate.log",
    threads: 1
    script:
        "../scripts/aggregate.py"


# The report's sections, in order (each a notebook in notebooks/).
REPORT_SECTIONS = ["report", "tradeoffs", "visor", "policy", "hired", "paired", "results"]


rule report_section:
    input:
        summary="results/summary.csv",
        samples="results/samples.csv",
        latency="results/latency.csv",
        claims="results/claims.csv",
        training="results/visor_training.csv",
        notebook=f"{workflow.basedir}/notebooks/{{section}}.ipynb",
    output:
        notebook="results/notebooks/{section}.ipynb",
        html="reports/{section}.html",
    params:
        parameters={"profile": config["audit"]["profile"], "rehearsal": config["rehearsal"],
                    "config_sha256": workflow_config.config_sha256(config),
                    "seed": config["seed"], "resamples": config["audit"]["resamples"],
                    "controls": {m: spec["control_of"] for m, spec in config["models"].items() if "control_of" in spec},
                    "gate_points": config["audit"]["visor_gate_points"]},
    wildcard_constraints:
        section="|".join(REPORT_SECTIONS),
    log:
        "logs/report/{section}.log",
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/render_report.py"


# Gathering the rendered sections is instant: on a cluster it runs where Snakemake runs.
localrules:
    report,


rule report:
    input:
        expand("results/notebooks/{section}.ipynb", section=REPORT_SECTIONS),
    output:
        html="reports/final.html",
    log:
        "logs/report.log",
    threads: 1
    script:
        "../scripts/render_report.py"
