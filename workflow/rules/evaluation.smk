# Evaluation through lmms-eval: one job per model x method x setting x benchmark.


def benchmark_inputs(wildcards):
    source = config["benchmarks"][wildcards.benchmark]["source"]
    if source == "synthetic":
        return [f"resources/benchmarks/{wildcards.benchmark}/manifest.json"]
    if source == "rehearsal":
        return [f"resources/rehearsal/tasks/{wildcards.benchmark}/manifest.json"]
    return []


def evaluation_checkpoint(wildcards):
    """The checkpoint record to load: for method visor the VISOR of the setting's training budget, the base
    model's otherwise."""
    if wildcards.method == "visor":
        return visor_record(wildcards.model, workflow_config.visor_budget(setting_of("visor", wildcards.setting)))
    return f"resources/checkpoints/{wildcards.model}.json"


rule evaluate:
    input:
        checkpoint=evaluation_checkpoint,
        benchmark=benchmark_inputs,
    output:
        "results/eval/{model}/{method}/{setting}/{benchmark}.json",
    params:
        setting=lambda wildcards: setting_of(wildcards.method, wildcards.setting),
        benchmark=lambda wildcards: config["benchmarks"][wildcards.benchmark],
        evaluation=config["evaluation"],
        lmms_dir="results/lmms_eval/{model}/{method}/{setting}/{benchmark}",
    log:
        "logs/evaluate/{model}/{method}/{setting}/{benchmark}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{method}/{setting}/{benchmark}.tsv"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input: model_mem_mb("evaluate", input.checkpoint),
        gpu=GPU_PER_JOB,
    script:
        "../scripts/evaluate.py"
