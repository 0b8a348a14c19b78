# Efficiency: synchronised latency of every configured model x method x setting on fixed inputs, measured
# outside lmms-eval (visor_model.efficiency.latency). FLOPs need no rule: every evaluation records them per sample.


rule measure_latency:
    input:
        checkpoint=evaluation_checkpoint,
    output:
        "results/latency/{model}/{method}/{setting}.json",
    params:
        setting=lambda wildcards: setting_of(wildcards.method, wildcards.setting),
        latency=config["latency"],
        evaluation=config["evaluation"],
    log:
        "logs/measure_latency/{model}/{method}/{setting}.log",
    benchmark:
        "benchmarks/measure_latency/{model}/{method}/{setting}.tsv"
    threads: config["latency"]["threads"]
    resources:
        mem_mb=lambda wildcards, input: model_mem_mb("measure_latency", input.checkpoint),
        gpu=GPU_PER_JOB,
    script:
        "../scripts/measure_latency.py"


def latency_outputs():
    """One latency record per configured run, plus those of the viable VISOR configurations (derived from
    viable_evaluation_outputs, whose not-yet-trained placeholders pass through unchanged)."""
    return [f"results/latency/{model}/{method}/{setting}.json" for model, method, setting in RUNS] + [
        viable_latency_outputs]


def viable_latency_outputs(wildcards):
    outputs = []
    for path in viable_evaluation_outputs(wildcards):
        parts = Path(path).parts
        if len(parts) == 6 and parts[:2] == ("results", "eval"):
            path = f"results/latency/{parts[2]}/{parts[3]}/{parts[4]}.json"
        if path not in outputs:
            outputs.append(path)
    return outputs
