# VISOR on the base models named in `visor.models`: train_visor (universal training + viable configurations;
# a checkpoint, because the viable configurations decide which `sa_layers: viable` evaluations exist)
# -> label_policy (every viable configuration on the labelling split) -> train_policy (the router; the final
# VISOR checkpoint that `evaluate` loads for method visor, with its provenance record).
# Each stage's params.options are the `visor:` options it depends on (workflow_config.visor_section, from the
# fields of visor_model.methods.visor.config): a change reruns that stage and what follows, not the others.
import json

VISOR_MODELS = list(config["visor"]["models"])


def visor_task_inputs():
    return expand("resources/benchmarks/{benchmark}/manifest.json", benchmark=workflow_config.training_benchmarks(config))


def universal_visor(model):
    return f"resources/visor/{model}/universal/visor_config.json"


def viable_sa_layers(model):
    """SA-layer counts of the viable configurations of `model`'s trained VISOR, or None while train_visor
    has not run. Not yet trained: the caller lists universal_visor(model) as a plain input instead of asking
    the checkpoint (Snakemake skips the rerun checks of a job whose input waits for a checkpoint, so an
    existing results/summary.csv would hide the new jobs); as a direct dependent of the checkpoint's output
    that job is re-evaluated once train_visor has run. Trained (and up to date, else this raises and Snakemake
    re-evaluates after the rerun): the counts from the checkpoint's visor_config.json."""
    if not Path(universal_visor(model)).exists():
        return None
    universal = checkpoints.train_visor.get(model=model).output[0]
    return [len(active) for active in json.loads(Path(universal).read_text())["viable"]]


checkpoint train_visor:
    input:
        checkpoint="resources/checkpoints/{model}.json",
        benchmarks=visor_task_inputs(),
    output:
        universal_visor("{model}"),
    params:
        options=workflow_config.visor_section(config, workflow_config.UNIVERSAL),
        seed=config["seed"],
        state="resources/train_state/visor_{model}",
    log:
        "logs/train_visor/{model}.log",
    benchmark:
        "benchmarks/train_visor/{model}.tsv"
    wildcard_constraints:
        model=alternatives(VISOR_MODELS),
    threads: config["visor"]["threads"]
    resources:
        mem_mb=lambda wildcards, input: model_mem_mb("train_visor", input.checkpoint),
        gpu=GPU_PER_JOB,
    script:
        "../scripts/train_visor.py"


rule label_policy:
    input:
        universal="resources/visor/{model}/universal/visor_config.json",
        benchmarks=visor_task_inputs(),
    output:
        "resources/visor/{model}/policy_labels.csv",
    params:
        options=workflow_config.visor_section(config, workflow_config.LABEL),
    log:
        "logs/label_policy/{model}.log",
    benchmark:
        "benchmarks/label_policy/{model}.tsv"
    wildcard_constraints:
        model=alternatives(VISOR_MODELS),
    threads: config["visor"]["threads"]
    resources:
        mem_mb=lambda wildcards, input: model_mem_mb("label_policy", input.universal, record=False),
        gpu=GPU_PER_JOB,
    script:
        "../scripts/label_policy.py"


rule train_policy:
    input:
        universal="resources/visor/{model}/universal/visor_config.json",
        labels="resources/visor/{model}/policy_labels.csv",
        benchmarks=visor_task_inputs(),
        base="resources/checkpoints/{model}.json",
    output:
        final="resources/visor/{model}/final/visor_config.json",
        record="resources/visor/{model}/checkpoint.json",
    params:
        options=workflow_config.visor_section(config, workflow_config.POLICY),
        seed=config["seed"],
    log:
        "logs/train_policy/{model}.log",
    benchmark:
        "benchmarks/train_policy/{model}.tsv"
    wildcard_constraints:
        model=alternatives(VISOR_MODELS),
    threads: config["visor"]["threads"]
    resources:
        mem_mb=lambda wildcards, input: model_mem_mb("train_policy", input.universal, record=False),
        gpu=GPU_PER_JOB,
    script:
        "../scripts/train_policy.py"
