# Checkpoints: one interface for every source. `shipped` (weights in this repository, verified against their
# SHA256SUMS), `train` (the reference recipe, also used for shipped models when `retrain: true`) and `hub`
# (a snapshot at a pinned revision, safetensors only). Each yields resources/checkpoints/{model}.json, which
# names the folder to load and its provenance.


def checkpoint_source(model):
    return workflow_config.checkpoint_source(config, model)


def control_of(model):
    """The base model a continued-training control (models.<model>.control_of) continues, or None."""
    return config["models"][model].get("control_of")


rule train_reference:
    input:
        benchmarks=expand("resources/benchmarks/{benchmark}/manifest.json",
                          benchmark=workflow_config.training_benchmarks(config)),
        base=lambda wildcards: [f"resources/checkpoints/{control_of(wildcards.model)}.json"] if control_of(
            wildcards.model) else [],
    output:
        "resources/trained/{model}/training.json",
    params:
        family=lambda wildcards: config["models"][wildcards.model]["family"],
        # a control trains as VISOR does (workflow_config.control_steps), a reference as `training:` says
        training=lambda wildcards: {**config["training"], **(workflow_config.control_steps(config) if control_of(
            wildcards.model) else {})},
        seed=config["seed"],
        state="resources/train_state/{model}",
    log:
        "logs/train_reference/{model}.log",
    benchmark:
        "benchmarks/train_reference/{model}.tsv"
    threads: config["training"]["threads"]
    resources:
        mem_mb=workflow_config.job_mem_mb("train_reference", config),
        gpu=GPU_PER_JOB,
    script:
        "../scripts/train_reference.py"


rule provide_checkpoint:
    input:
        lambda wildcards: (
            ["resources/trained/{model}/training.json"] if checkpoint_source(wildcards.model) == "train" else []
        ),
        rehearsal_checkpoint_inputs,
    output:
        "resources/checkpoints/{model}.json",
    params:
        spec=lambda wildcards: config["models"][wildcards.model],
        source=lambda wildcards: checkpoint_source(wildcards.model),
        trained_dir="resources/trained/{model}",
    log:
        "logs/provide_checkpoint/{model}.log",
    threads: 1
    script:
        "../scripts/provide_checkpoint.py"
