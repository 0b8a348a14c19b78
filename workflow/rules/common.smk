# Parse-time setup: the config checked (defaults filled in) and the configured jobs, by the pure functions of
# visor_model.workflow_config (no Snakemake, torch or transformers: cheap and offline); the input functions
# of the evaluations here.
import errno
import json
from pathlib import Path

from visor_model import workflow_config

workflow_config.check(
    config,
    workflow.source_path("../schemas/config.schema.yaml"),
    overlay=workflow.config_settings.overwrite_config,
    replace_workflow_config=workflow.config_settings.replace_workflow_config,
)

BENCHMARKS = list(config["benchmarks"])
# Jobs that would use a GPU declare gpu=1 where there is one (profiles/default limits it to the GPUs present).
GPU_PER_JOB = workflow_config.gpu_per_job()
MODELS = list(config["models"])
RUNS, SETTINGS, VIABLE_RUNS = workflow_config.configured_runs(config)
# (model, budget) of every VISOR the runs evaluate (visor.smk trains or provides each)
VISOR_TRAININGS = workflow_config.visor_trainings(RUNS, SETTINGS, VIABLE_RUNS)
setting_id = workflow_config.setting_id
alternatives = workflow_config.alternatives


def setting_of(method, setting):
    """The setting (dict) of a setting id: a configured one, or sa_layers=K of a `sa_layers: viable` grid."""
    return workflow_config.setting_of(SETTINGS, VIABLE_RUNS, method, setting)


wildcard_constraints:
    model=alternatives(MODELS),
    benchmark=alternatives(BENCHMARKS),
    method=alternatives(config["methods"]),
    setting=workflow_config.setting_constraint(SETTINGS, VIABLE_RUNS),


def evaluation_outputs():
    """Every configured evaluation, plus a function that adds those of the viable configurations (after
    train_visor: viable_sa_layers in visor.smk)."""
    return [f"results/eval/{model}/{method}/{setting}/{benchmark}.json"
            for model, method, setting in RUNS for benchmark in BENCHMARKS] + [viable_evaluation_outputs]


def viable_evaluation_outputs(wildcards):
    """Evaluations of the viable configurations of each provided VISOR; for one not provided yet, its checkpoint
    record instead (this function runs again once it exists: see viable_sa_layers)."""
    runs, pending = workflow_config.expand_viable_runs(VIABLE_RUNS, viable_sa_layers, RUNS)
    return [visor_record(model, budget) for model, budget in pending] + [
        f"results/eval/{model}/{method}/{setting}/{benchmark}.json"
        for model, method, setting in runs for benchmark in BENCHMARKS]


def model_mem_mb(rule, folder_input, record=True):
    """mem_mb of a job of `rule` from the model it loads (workflow_config.job_mem_mb): `folder_input` is the input
    naming it, a checkpoint record (`record`) or a file in the checkpoint folder. While that is not readable (not
    made yet, or a placeholder) this raises a FileNotFoundError naming the input, which leaves mem_mb <TBD>;
    Snakemake evaluates it again once the input exists, and a job whose checkpoint is broken names the fault
    when it loads it."""
    path = Path(folder_input)
    try:
        folder = json.loads(path.read_text())["path"] if record else path.parent
        shape = workflow_config.ModelShape.read(folder)
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise FileNotFoundError(errno.ENOENT, f"no readable checkpoint behind {path}: {error}", str(path)) from None
    return workflow_config.job_mem_mb(rule, config, shape)
