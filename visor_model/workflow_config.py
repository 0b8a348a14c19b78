"""The workflow's configuration logic, as plain functions of the config dict: validation with messages that
name the key (`check`), the configured runs and their setting ids (`configured_runs`, `setting_id`, ...),
and the options each VISOR stage depends on (`visor_section`).

workflow/rules/*.smk keep the rules and input functions and call this module. It imports neither Snakemake
nor torch / transformers (every job re-parses the Snakefile, so parsing stays cheap), and it is unit-tested
without Snakemake (tests/test_workflow_config.py).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import shutil

import yaml
from jsonschema import Draft202012Validator, validators

from visor_model.methods.visor.config import LABEL, POLICY, UNIVERSAL, stage_options  # noqa: F401 (stage names)

# `grid: {sa_layers: viable}` (visor): every viable configuration of the trained checkpoint, known only once
# train_visor (a checkpoint) has run; the rest of such a grid gives the settings it is combined with.
VIABLE = "viable"


# ----------------------------------------------------------------------------------------------------------
# validation


def load_schema(schema_path) -> dict:
    with open(schema_path) as file:
        return yaml.safe_load(file)


def schema_problems(config: dict, schema: dict) -> list[str]:
    """Every schema violation, as 'config error at <key>: <message>' (e.g. methods.random_drop.settings[0].budget)."""
    problems = []
    for error in sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        problems.append(f"config error at {where or '(top level)'}: {error.message}")
    return problems


def _with_defaults(validator_class):
    """A validator that fills in the schema's defaults while it validates (the recipe of the jsonschema FAQ,
    as snakemake.utils.validate uses it); each default is a copy, so configs never share one."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if "default" in subschema:
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def fill_defaults(config: dict, schema: dict) -> dict:
    """Fills the schema's defaults into `config`, in place (as snakemake.utils.validate does); returns it."""
    _with_defaults(Draft202012Validator)(schema).validate(config)
    return config


def check_config(config: dict, schema_path) -> None:
    """Validates `config` against the schema (ValueError listing every problem, each naming its key), fills in
    the defaults (in place), and checks that sweeps name configured models."""
    schema = load_schema(schema_path)
    problems = schema_problems(config, schema)
    if problems:
        raise ValueError("\n".join(problems))
    fill_defaults(config, schema)
    for method, sweeps in config["methods"].items():
        for i, sweep in enumerate(sweeps):
            for model in sweep.get("models", []):
                if model not in config["models"]:
                    raise ValueError(f"config error at methods.{method}[{i}].models: unknown model {model!r}; "
                                     f"configured models: {', '.join(config['models'])}")


def training_benchmarks(config: dict) -> list[str]:
    """The synthetic benchmarks with a train split: reference training and VISOR train on these."""
    return [b for b, spec in config["benchmarks"].items() if spec["source"] == "synthetic" and spec["train"] > 0]


def check_visor_config(config: dict) -> None:
    """VISOR sweeps only on models VISOR is trained for; val splits large enough for both uses (a validated
    config, defaults filled in)."""
    for method, sweeps in config["methods"].items():
        for i, sweep in enumerate(sweeps):
            if method != "visor" and sweep.get("grid", {}).get("sa_layers") == VIABLE:
                raise ValueError(f"config error at methods.{method}[{i}].grid.sa_layers: 'viable' (the viable "
                                 "configurations of a trained VISOR) is for method visor only")
    if "visor" not in config["methods"]:
        return
    visor_models = list(config["visor"]["models"])
    for model in visor_models:
        if model not in config["models"]:
            raise ValueError(f"config error at visor.models: unknown model {model!r}; "
                             f"configured models: {', '.join(config['models'])}")
    for i, sweep in enumerate(config["methods"]["visor"]):
        for model in sweep.get("models", visor_models):
            if model not in visor_models:
                raise ValueError(f"config error at methods.visor[{i}].models: VISOR is not trained for {model!r}; "
                                 f"add it to visor.models (now: {', '.join(visor_models) or 'none'})")
    needed = config["visor"]["viable_per_task"] + config["visor"]["label_per_task"]
    for benchmark in training_benchmarks(config):
        if config["benchmarks"][benchmark]["val"] < needed:
            raise ValueError(
                f"config error at benchmarks.{benchmark}.val: VISOR needs {needed} val rows per benchmark "
                f"(visor.viable_per_task + visor.label_per_task), the split has "
                f"{config['benchmarks'][benchmark]['val']}")


def check_paper_profile(config: dict, overlay: dict | None, replace_workflow_config: bool) -> None:
    """`--configfile config/paper.yaml` without --replace-workflow-config merges it into config/config.yaml:
    the offline reference models and synthetic benchmarks would join the paper profile's run. Stop and say so.
    `overlay`: the --configfile / --config contents (Snakemake's config_settings.overwrite_config)."""
    overlay = overlay or {}
    if config["audit"]["profile"] != "paper" or replace_workflow_config:
        return
    for key in ("models", "benchmarks"):
        extra = sorted(set(config[key]) - set(overlay.get(key, config[key])))
        if extra:
            raise ValueError(
                f"config error at {key}: {', '.join(extra)} came from the workflow's config/config.yaml, merged with "
                f"the --configfile of the paper profile; run with --replace-workflow-config to use only that file")


def check(config: dict, schema_path, overlay: dict | None = None, replace_workflow_config: bool = False) -> dict:
    """Every check, in the order the Snakefile runs them (check_config fills in the defaults, in place, that
    the others read); returns `config`."""
    check_config(config, schema_path)
    check_visor_config(config)
    check_paper_profile(config, overlay, replace_workflow_config)
    return config


# ----------------------------------------------------------------------------------------------------------
# the configured runs


def setting_id(setting: dict) -> str:
    """A setting as a path component: {'budget': 0.2, 'seed': 0} -> 'budget-0.2_seed-0'; {} -> 'default'."""
    return "_".join(f"{key}-{setting[key]}" for key in sorted(setting)) or "default"


def grid_product(grid: dict) -> list[dict]:
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def sweep_settings(sweep: dict) -> list[dict]:
    """Explicit settings, then the cartesian product of the grid (keys in sorted order); a grid with
    `sa_layers: viable` adds none here (see viable_templates)."""
    settings = list(sweep.get("settings", []))
    grid = sweep.get("grid", {})
    return settings + (grid_product(grid) if grid and grid.get("sa_layers") != VIABLE else [])


def viable_templates(sweep: dict) -> list[dict]:
    """The settings, without sa_layers, that every viable sa_layers value of a `sa_layers: viable` grid joins."""
    grid = sweep.get("grid", {})
    return grid_product({k: v for k, v in grid.items() if k != "sa_layers"}) if grid.get("sa_layers") == VIABLE else []


def viable_pattern(template: dict, group: bool = False) -> str:
    """Regex of the setting ids of a viable template: sa_layers-<int> in its sorted place."""
    marker = "SALAYERS"
    return re.escape(setting_id({**template, "sa_layers": marker})).replace(marker, "([0-9]+)" if group else "[0-9]+")


def configured_runs(config: dict) -> tuple[list, dict, list]:
    """(model, method, setting_id) for every configured evaluation, in config order, without repeats;
    {(method, setting_id): setting}; and (model, method, template) for every `sa_layers: viable` grid. Visor
    sweeps default to visor.models, the others to every model."""
    runs, settings, viable_runs = [], {}, []
    for method, sweeps in config["methods"].items():
        for sweep in sweeps:
            models = sweep.get("models", config["visor"]["models"] if method == "visor" else list(config["models"]))
            for setting in sweep_settings(sweep):
                settings[(method, setting_id(setting))] = setting
                for model in models:
                    run = (model, method, setting_id(setting))
                    if run not in runs:
                        runs.append(run)
            viable_runs += [(model, method, template) for template in viable_templates(sweep) for model in models]
    return runs, settings, viable_runs


def setting_of(settings: dict, viable_runs: list, method: str, setting: str) -> dict:
    """The setting (dict) of a setting id: a configured one, or sa_layers=K of a `sa_layers: viable` grid
    (`settings`, `viable_runs`: from configured_runs)."""
    if (method, setting) in settings:
        return settings[(method, setting)]
    for _, viable_method, template in viable_runs:
        match = re.fullmatch(viable_pattern(template, group=True), setting)
        if viable_method == method and match:
            return {**template, "sa_layers": int(match.group(1))}
    raise ValueError(f"{setting!r} is not a configured setting of method {method}")


def alternatives(values) -> str:
    """A wildcard constraint matching exactly these values."""
    return "|".join(sorted({str(v).replace(".", r"\.") for v in values}))


def setting_constraint(settings: dict, viable_runs: list) -> str:
    """The wildcard constraint of {setting}: the configured setting ids and the viable templates' patterns."""
    return "|".join(filter(None, [alternatives(s for _, s in settings),
                                  *sorted({viable_pattern(t) for _, _, t in viable_runs})]))


# ----------------------------------------------------------------------------------------------------------
# what rules read from the config


def checkpoint_source(config: dict, model: str) -> str:
    """Where `model`'s checkpoint comes from: shipped, train or hub (shipped ones are retrained with retrain: true)."""
    source = config["models"][model]["checkpoint"]["source"]
    return "train" if source == "shipped" and config["retrain"] else source


def visor_section(config: dict, stage: str) -> dict:
    """The `visor:` options `stage` (UNIVERSAL, LABEL or POLICY: train_visor, label_policy, train_policy) depends
    on (visor_model.methods.visor.config.stage_options): a change reruns that stage and what follows."""
    return {key: config["visor"][key] for key in stage_options(stage)}


def claims_file(config: dict, basedir) -> str:
    """The claims YAML: audit.claims, else the workflow's config/claims.yaml."""
    return config["audit"]["claims"] or f"{basedir}/config/claims.yaml"


def config_sha256(config: dict) -> str:
    """SHA-256 of the validated configuration (defaults filled in), shown in the report's provenance."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def gpu_per_job() -> int:
    """GPUs a job that would use one declares: 1 where there is one (profiles/default limits it to the GPUs
    present), else 0."""
    return 1 if shutil.which("nvidia-smi") else 0
