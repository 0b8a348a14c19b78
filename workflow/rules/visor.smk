# VISOR on the base models named in `visor.models`, at each training budget of `visor.budgets` that a methods.visor
# sweep evaluates (`training: <budget>`; default full): train_visor (universal training, the viable
# configurations) -> label_policy (every viable configuration on the labelling split) -> train_policy (the router)
# -> provide_visor (the checkpoint record that `evaluate` loads for method visor). A checkpoint shipped in
# visor.shipped replaces the three training stages (verified against its SHA256SUMS and its base; retrain: true
# trains it from the seed instead). Each stage's params.options are the `visor:` options it depends on
# (workflow_config.visor_section, from the fields of visor_model.methods.visor.config): a change reruns that
# stage and what follows, not the others.
import json

VISOR_MODELS = list(config["visor"]["models"])
VISOR_BUDGETS = list(config["visor"]["budgets"])


def visor_task_inputs():
    return expand("resources/benchmarks/{benchmark}/manifest.json", benchmark=workflow_config.training_benchmarks(config))


def visor_record(model, budget="full"):
    return f"resources/visor/{model}/{budget}/checkpoint.json"


def viable_sa_layers(model, budget="full"):
    """SA-layer counts of the viable configurations of `model`'s VISOR at `budget`, or None while provide_visor
    has not run. Not provided yet: the caller lists visor_record(model, budget) as a plain input instead of asking
    the checkpoint (Snakemake skips the rerun checks of a job whose input waits for a checkpoint, so an existing
    results/summary.csv would hide the new jobs); as a direct dependent of the checkpoint's output that job is
    re-evaluated once provide_visor has run. Provided (and up to date, else this raises and Snakemake
    re-evaluates after the rerun): the counts from the checkpoint folder's visor_config.json."""
    if not Path(visor_record(model, budget)).exists():
        return None
    record = json.loads(Path(checkpoints.provide_visor.get(model=model, budget=budget).output[0]).read_text())
    return [len(active) for active in json.loads((Path(record["path"]) / "visor_config.json").read_text())["viable"]]


wildcard_constraints:
    budget=alternatives(VISOR_BUDGETS),


rule train_visor:
    input:
        checkpoint="resources/checkpoints/{model}.json",
        benchmarks=visor_task_inputs(),
    output:
        "resources/visor/{model}/{budget}/universal/visor_config.json",
    params:
        options=lambda wildcards: workflow_config.visor_section(config, workflow_config.UNIVERSAL, wildcards.budget),
        seed=config["seed"],
        state="resources/train_state/visor_{model}_{budget}",
    log:
        "logs/train_visor/{model}/{budget}.log",
    benchmark:
        "benchmarks/train_visor/{model}/{budget}.tsv"
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
        universal="resources/visor/{model}/{budget}/universal/visor_config.json",
        benchmarks=visor_task_inputs(),
    output:
        "resources/visor/{model}/{budget}/policy_labels.csv",
    params:
        options=workflow_config.visor_section(config, workflow_config.LABEL),
    log:
        "logs/label_policy/{model}/{budget}.log",
    benchmark:
        "benchmarks/label_policy/{model}/{budget}.tsv"
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
        universal="resources/visor/{model}/{budget}/universal/visor_config.json",
        labels="resources/visor/{model}/{budget}/policy_labels.csv",
        benchmarks=visor_task_inputs(),
    output:
        "resources/visor/{model}/{budget}/final/visor_config.json",
    params:
        options=workflow_config.visor_section(config, workflow_config.POLICY),
        seed=config["seed"],
    log:
        "logs/train_policy/{model}/{budget}.log",
    benchmark:
        "benchmarks/train_policy/{model}/{budget}.tsv"
    wildcard_constraints:
        model=alternatives(VISOR_MODELS),
    threads: config["visor"]["threads"]
    resources:
        mem_mb=lambda wildcards, input: model_mem_mb("train_policy", input.universal, record=False),
        gpu=GPU_PER_JOB,
    script:
        "../scripts/train_policy.py"


checkpoint provide_visor:
    input:
        base="resources/checkpoints/{model}.json",
        trained=lambda wildcards: (
            [] if workflow_config.shipped_visor(config, wildcards.model, wildcards.budget)
            else ["resources/visor/{model}/{budget}/final/visor_config.json"]
        ),
    output:
        visor_record("{model}", "{budget}"),
    params:
        shipped=lambda wildcards: workflow_config.shipped_visor(config, wildcards.model, wildcards.budget),
        budget=lambda wildcards: {"name": wildcards.budget, "fraction": config["visor"]["budgets"][wildcards.budget]},
    log:
        "logs/provide_visor/{model}/{budget}.log",
    wildcard_constraints:
        model=alternatives(VISOR_MODELS),
    threads: 1
    script:
        "../scripts/provide_visor.py"


rule visor_training_table:
    input:
        lambda wildcards: [visor_record(model, budget) for model, budget in VISOR_TRAININGS],
    output:
        "results/visor_training.csv",
    log:
        "logs/visor_training_table.log",
    threads: 1
    script:
        "../scripts/visor_training_table.py"
