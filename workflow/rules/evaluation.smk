# Evaluation through lmms-eval: one job per model x method x setting that evaluates every configured benchmark
# in one process (the model loaded, lmms-eval imported and each task folder indexed once: most of a small
# evaluation's time), or with evaluation.group_benchmarks: false one job per model x method x setting x benchmark
# (a benchmark added to the config then adds only its jobs; a grouped run evaluates it with all the others).

GROUP_BENCHMARKS = config["evaluation"]["group_benchmarks"]
# The benchmarks in an evaluate job's outputs (every configured one, or its wildcard) and the job's name in logs/
# and benchmarks/.
EVALUATED = BENCHMARKS if GROUP_BENCHMARKS else ["{benchmark}"]
EVALUATE_JOB = "{model}/{method}/{setting}" if GROUP_BENCHMARKS else "{model}/{method}/{setting}/{benchmark}"


def job_benchmarks(wildcards):
    return BENCHMARKS if GROUP_BENCHMARKS else [wildcards.benchmark]


def task_folder(benchmark):
    """The lmms-eval task folder the workflow makes for `benchmark`, or None (a built-in task, or one in the
    entry's own include_path)."""
    source = config["benchmarks"][benchmark]["source"]
    if source == "synthetic":
        return f"resources/benchmarks/{benchmark}"
    if source == "rehearsal":
        return f"resources/rehearsal/tasks/{benchmark}"
    return None


def benchmark_inputs(wildcards):
    return [f"{folder}/manifest.json" for folder in map(task_folder, job_benchmarks(wildcards)) if folder]


def evaluation_checkpoint(wildcards):
    """The checkpoint record to load: for method visor the VISOR of the setting's training budget, the base
    model's otherwise."""
    if wildcards.method == "visor":
        return visor_record(wildcards.model, workflow_config.visor_budget(setting_of("visor", wildcards.setting)))
    return f"resources/checkpoints/{wildcards.model}.json"


rule evaluate:
    input:
        checkpoint=evaluation_checkpoint,
        benchmarks=benchmark_inputs,
    output:
        expand("results/eval/{{model}}/{{method}}/{{setting}}/{benchmark}.json", benchmark=EVALUATED),
    params:
        setting=lambda wildcards: setting_of(wildcards.method, wildcards.setting),
        benchmarks=lambda wildcards: {b: config["benchmarks"][b] for b in job_benchmarks(wildcards)},
        task_folders=lambda wildcards: {b: task_folder(b) for b in job_benchmarks(wildcards)},
        evaluation=config["evaluation"],
        lmms_dir="results/lmms_eval/{model}/{method}/{setting}",  # a folder per benchmark
    log:
        f"logs/evaluate/{EVALUATE_JOB}.log",
    benchmark:
        f"benchmarks/evaluate/{EVALUATE_JOB}.tsv"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input: model_mem_mb("evaluate", input.checkpoint),
        gpu=GPU_PER_JOB,
    script:
        "../scripts/evaluate.py"
