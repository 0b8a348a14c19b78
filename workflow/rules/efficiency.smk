# Efficiency: synchronised latency on fixed inputs, measured outside lmms-eval (visor_model.efficiency.latency).
# One job per model times all of that model's settings side by side in one process, interleaved over repeats,
# and takes every core Snakemake has (threads: workflow.cores), so no other job runs beside it and whatever load
# the machine has falls on all settings alike. FLOPs need no rule: every evaluation records them per sample.
from types import SimpleNamespace


def latency_runs(model):
    """The runs of `model` to time, [{method, setting_id, setting, checkpoint}]: its configured runs, then the
    viable VISOR configurations of each training budget (known after provide_visor: viable_sa_layers; none before,
    and the job, a direct dependent of the VISOR checkpoint records through latency_inputs, is evaluated again once
    they exist).
    `checkpoint` is the record the run's plugin loads, as for `evaluate` (evaluation_checkpoint)."""
    configured = [run for run in RUNS if run[0] == model]
    viable, _ = workflow_config.expand_viable_runs([run for run in VIABLE_RUNS if run[0] == model],
                                                   viable_sa_layers, configured)
    runs = [(method, setting) for _, method, setting in configured + viable]
    return [{"method": method, "setting_id": setting, "setting": setting_of(method, setting),
             "checkpoint": evaluation_checkpoint(SimpleNamespace(model=model, method=method, setting=setting))}
            for method, setting in runs]


def latency_inputs(wildcards):
    """The checkpoint records the runs load and, for a model with viable VISOR configurations, the VISOR checkpoint
    records that decide them (provide_visor's outputs: latency_runs reads them)."""
    inputs = {"checkpoints": list(dict.fromkeys(run["checkpoint"] for run in latency_runs(wildcards.model)))}
    viable = [visor_record(m, workflow_config.visor_budget(t)) for m, _, t in VIABLE_RUNS if m == wildcards.model]
    if viable:
        inputs["viable"] = list(dict.fromkeys(viable))
    return inputs


rule measure_latency:
    input:
        unpack(latency_inputs),
    output:
        "results/latency/{model}.json",
    params:
        runs=lambda wildcards: latency_runs(wildcards.model),
        latency=config["latency"],
        evaluation=config["evaluation"],
    log:
        "logs/measure_latency/{model}.log",
    benchmark:
        "benchmarks/measure_latency/{model}.tsv"
    threads: workflow.cores
    resources:
        # every checkpoint the job loads, each once (the base model; VISOR's for a VISOR host)
        mem_mb=lambda wildcards, input: sum(model_mem_mb("measure_latency", path) for path in input.checkpoints),
        gpu=GPU_PER_JOB,
    script:
        "../scripts/measure_latency.py"


def latency_outputs():
    """One latency record per model with a configured run (or viable VISOR configurations)."""
    models = {model for model, _, _ in RUNS} | {model for model, _, _ in VIABLE_RUNS}
    return [f"results/latency/{model}.json" for model in MODELS if model in models]
