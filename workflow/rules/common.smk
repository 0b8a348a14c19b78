# Parse-time helpers: config validation and the list of configured jobs. Cheap and offline.
import itertools
import re
import shutil
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from snakemake.utils import validate


def check_config(config):
    """Validate against the schema with messages that name the key (e.g. methods.random_drop.settings[0].budget)."""
    schema = yaml.safe_load(open(workflow.source_path("../schemas/config.schema.yaml")))
    problems = []
    for error in sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        problems.append(f"config error at {where or '(top level)'}: {error.message}")
    if problems:
        raise ValueError("\n".join(problems))
    validate(config, workflow.source_path("../schemas/config.schema.yaml"))  # fills in defaults
    for method, sweeps in config["methods"].items():
        for i, sweep in enumerate(sweeps):
            for model in sweep.get("models", []):
                if model not in config["models"]:
                    raise ValueError(f"config error at methods.{method}[{i}].models: unknown model {model!r}; "
                                     f"configured models: {', '.join(config['models'])}")


check_config(config)

BENCHMARKS = list(config["benchmarks"])
# Jobs that would use a GPU declare gpu=1 where there is one (profiles/default limits it to the GPUs present).
GPU_PER_JOB = 1 if shutil.which("nvidia-smi") else 0
MODELS = list(config["models"])


def setting_id(setting):
    """A setting as a path component: {'budget': 0.2, 'seed': 0} -> 'budget-0.2_seed-0'; {} -> 'default'."""
    return "_".join(f"{key}-{setting[key]}" for key in sorted(setting)) or "default"


# `grid: {sa_layers: viable}` (visor): every viable configuration of the trained checkpoint, known only once
# train_visor (a checkpoint) has run; the rest of such a grid gives the settings it is combined with.
VIABLE = "viable"


def grid_product(grid):
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def sweep_settings(sweep):
    """Explicit settings, then the cartesian product of the grid (keys in sorted order); a grid with
    `sa_layers: viable` adds none here (see viable_templates)."""
    settings = list(sweep.get("settings", []))
    grid = sweep.get("grid", {})
    return settings + (grid_product(grid) if grid and grid.get("sa_layers") != VIABLE else [])


def viable_templates(sweep):
    """The settings, without sa_layers, that every viable sa_layers value of a `sa_layers: viable` grid joins."""
    grid = sweep.get("grid", {})
    return grid_product({k: v for k, v in grid.items() if k != "sa_layers"}) if grid.get("sa_layers") == VIABLE else []


def viable_pattern(template, group=False):
    """Regex of the setting ids of a viable template: sa_layers-<int> in its sorted place."""
    marker = "SALAYERS"
    return re.escape(setting_id({**template, "sa_layers": marker})).replace(marker, "([0-9]+)" if group else "[0-9]+")


def configured_runs():
    """(model, method, setting_id) for every configured evaluation, in config order, without repeats; and
    (model, method, template) for every `sa_layers: viable` grid. Visor sweeps default to visor.models."""
    runs, settings, viable_runs = [], {}, []
    for method, sweeps in config["methods"].items():
        for sweep in sweeps:
            models = sweep.get("models", config["visor"]["models"] if method == "visor" else MODELS)
            for setting in sweep_settings(sweep):
                settings[(method, setting_id(setting))] = setting
                for model in models:
                    run = (model, method, setting_id(setting))
                    if run not in runs:
                        runs.append(run)
            viable_runs += [(model, method, template) for template in viable_templates(sweep) for model in models]
    return runs, settings, viable_runs


RUNS, SETTINGS, VIABLE_RUNS = configured_runs()


def setting_of(method, setting):
    """The setting (dict) of a setting id: a configured one, or sa_layers=K of a `sa_layers: viable` grid."""
    if (method, setting) in SETTINGS:
        return SETTINGS[(method, setting)]
    for _, viable_method, template in VIABLE_RUNS:
        match = re.fullmatch(viable_pattern(template, group=True), setting)
        if viable_method == method and match:
            return {**template, "sa_layers": int(match.group(1))}
    raise ValueError(f"{setting!r} is not a configured setting of method {method}")


def alternatives(values):
    return "|".join(sorted({str(v).replace(".", r"\.") for v in values}))


wildcard_constraints:
    model=alternatives(MODELS),
    benchmark=alternatives(BENCHMARKS),
    method=alternatives(config["methods"]),
    setting="|".join(filter(None, [alternatives(s for _, s in SETTINGS),
                                   *sorted({viable_pattern(t) for _, _, t in VIABLE_RUNS})])),


def evaluation_outputs():
    """Every configured evaluation, plus a function that adds those of the viable configurations (after
    train_visor: viable_sa_layers in visor.smk)."""
    return [f"results/eval/{model}/{method}/{setting}/{benchmark}.json"
            for model, method, setting in RUNS for benchmark in BENCHMARKS] + [viable_evaluation_outputs]


def viable_evaluation_outputs(wildcards):
    """Evaluations of the viable configurations of each trained VISOR; for one not trained yet, its
    universal checkpoint file instead (this function runs again once it exists: see viable_sa_layers)."""
    configured, runs, pending = set(RUNS), [], []
    for model, method, template in VIABLE_RUNS:
        counts = viable_sa_layers(model)
        if counts is None:
            pending += [] if universal_visor(model) in pending else [universal_visor(model)]
            continue
        for k in counts:
            run = (model, method, setting_id({**template, "sa_layers": k}))
            if run not in configured and run not in runs:
                runs.append(run)
    return pending + [f"results/eval/{model}/{method}/{setting}/{benchmark}.json"
                      for model, method, setting in runs for benchmark in BENCHMARKS]
