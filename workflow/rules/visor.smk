# VISOR on the base models named in `visor.models`: train_visor (universal training + viable configurations;
# a checkpoint, because the viable configurations decide which `sa_layers: viable` evaluations exist)
# -> label_policy (every viable configuration on the labelling split) -> train_policy (the router; the final
# VISOR checkpoint that `evaluate` loads for method visor, with its provenance record).
import json

VISOR_MODELS = list(config["visor"]["models"])
# Options each stage depends on (a change reruns that stage and what follows, not the others).
UNIVERSAL_OPTIONS = ("stage1_steps", "stage2_steps", "batch_size", "stage1_lr", "stage2_lr", "warmup_steps",
                     "stage1_sampling", "ca_layers", "sa_candidates", "conv_kernel", "gate_init", "ca_init",
                     "ca_rope", "router_hidden", "viable_per_task", "inference_batch_size")
LABEL_OPTIONS = ("viable_per_task", "label_per_task", "inference_batch_size")
POLICY_OPTIONS = ("router_steps", "router_lr", "router_batch_size")


def visor_section(keys):
    return {key: config["visor"][key] for key in keys}


def check_visor_config():
    """VISOR sweeps only on models VISOR is trained for; val splits large enough for both uses."""
    for method, sweeps in config["methods"].items():
        for i, sweep in enumerate(sweeps):
            if method != "visor" and sweep.get("grid", {}).get("sa_layers") == VIABLE:
                raise ValueError(f"config error at methods.{method}[{i}].grid.sa_layers: 'viable' (the viable "
                                 "configurations of a trained VISOR) is for method visor only")
    if "visor" not in config["methods"]:
        return
    for model in VISOR_MODELS:
        if model not in config["models"]:
            raise ValueError(f"config error at visor.models: unknown model {model!r}; "
                             f"configured models: {', '.join(config['models'])}")
    for i, sweep in enumerate(config["methods"]["visor"]):
        for model in sweep.get("models", VISOR_MODELS):
            if model not in VISOR_MODELS:
                raise ValueError(f"config error at methods.visor[{i}].models: VISOR is not trained for {model!r}; "
                                 f"add it to visor.models (now: {', '.join(VISOR_MODELS) or 'none'})")
    needed = config["visor"]["viable_per_task"] + config["visor"]["label_per_task"]
    for benchmark in training_benchmarks():
        if config["benchmarks"][benchmark]["val"] < needed:
            raise ValueError(
                f"config error at benchmarks.{benchmark}.val: VISOR needs {needed} val rows per benchmark "
                f"(visor.viable_per_task + visor.label_per_task), the split has {config['benchmarks'][benchmark]['val']}")


check_visor_config()


def visor_task_inputs():
    return expand("resources/benchmarks/{benchmark}/manifest.json", benchmark=training_benchmarks())


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
        options=visor_section(UNIVERSAL_OPTIONS),
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
        mem_mb=6000,
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
        options=visor_section(LABEL_OPTIONS),
    log:
        "logs/label_policy/{model}.log",
    benchmark:
        "benchmarks/label_policy/{model}.tsv"
    wildcard_constraints:
        model=alternatives(VISOR_MODELS),
    threads: config["visor"]["threads"]
    resources:
        mem_mb=4000,
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
        options=visor_section(POLICY_OPTIONS),
        seed=config["seed"],
    log:
        "logs/train_policy/{model}.log",
    benchmark:
        "benchmarks/train_policy/{model}.tsv"
    wildcard_constraints:
        model=alternatives(VISOR_MODELS),
    threads: config["visor"]["threads"]
    resources:
        mem_mb=4000,
        gpu=GPU_PER_JOB,
    script:
        "../scripts/train_policy.py"
