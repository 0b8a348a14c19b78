# Tidy results and the HTML report rendered from papermill notebooks.


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


rule report:
    input:
        summary="results/summary.csv",
        samples="results/samples.csv",
        notebook=f"{workflow.basedir}/notebooks/report.ipynb",
    output:
        html="reports/final.html",
        notebook="results/notebooks/report.ipynb",
    log:
        "logs/report.log",
    threads: 1
    script:
        "../scripts/render_report.py"
