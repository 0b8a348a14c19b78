# The offline rehearsal of the paper profile (config/rehearsal.yaml): random-weight stand-ins of the hub
# checkpoints written into the workflow's own HF cache (then fetched by provide_checkpoint like any hub
# snapshot), and lmms-eval's own task definitions over a few local documents per benchmark.
import os

REHEARSAL_HUB_CACHE = "resources/rehearsal/hf_cache"
REHEARSAL_DATASETS_CACHE = "resources/rehearsal/datasets_cache"

if config["rehearsal"]:
    # every job (a subprocess of this one) reads these; set before any of them imports huggingface_hub/datasets
    os.environ.update(HF_HUB_CACHE=os.path.abspath(REHEARSAL_HUB_CACHE),
                      HF_DATASETS_CACHE=os.path.abspath(REHEARSAL_DATASETS_CACHE),
                      HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def rehearsal_checkpoint_inputs(wildcards):
    spec = config["models"][wildcards.model]["checkpoint"]
    return [f"resources/rehearsal/checkpoints/{wildcards.model}.json"] if "rehearsal_of" in spec else []


rule rehearsal_checkpoint:
    output:
        "resources/rehearsal/checkpoints/{model}.json",
    params:
        spec=lambda wildcards: config["models"][wildcards.model]["checkpoint"],
        cache=REHEARSAL_HUB_CACHE,
        seed=config["seed"],
    log:
        "logs/rehearsal_checkpoint/{model}.log",
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/rehearsal_checkpoint.py"


rule rehearsal_task:
    output:
        "resources/rehearsal/tasks/{benchmark}/manifest.json",
    params:
        spec=lambda wildcards: config["benchmarks"][wildcards.benchmark],
        datasets_cache=REHEARSAL_DATASETS_CACHE,
        seed=config["seed"],
    log:
        "logs/rehearsal_task/{benchmark}.log",
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/rehearsal_task.py"
