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
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

from visor_model.devices import resolve_device
from visor_model.methods import registry
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
    the defaults (in place), and checks that sweeps name configured models. The schema's method enum and setting
    keys must be those of `visor_model.methods.registry`."""
    schema = load_schema(schema_path)
    disagreements = registry.schema_disagreements(schema)
    if disagreements:
        raise ValueError(f"{schema_path} and visor_model.methods.registry disagree:\n" + "\n".join(disagreements))
    problems = schema_problems(config, schema)
    if problems:
        raise ValueError("\n".join(problems))
    fill_defaults(config, schema)
    for model, spec in config["models"].items():
        base = spec.get("control_of")
        if base is not None and (base not in config["models"] or config["models"][base]["family"] != spec["family"]):
            raise ValueError(f"config error at models.{model}.control_of: {base!r} must be a configured model of the "
                             f"same family ({spec['family']}); configured models: {', '.join(config['models'])}")
    for method, sweeps in config["methods"].items():
        for i, sweep in enumerate(sweeps):
            for model in sweep.get("models", []):
                if model not in config["models"]:
                    raise ValueError(f"config error at methods.{method}[{i}].models: unknown model {model!r}; "
                                     f"configured models: {', '.join(config['models'])}")


def check_method_settings(config: dict) -> None:
    """Every sweep gives its method only the setting keys of the method's record (`visor_model.methods.registry`):
    a key the plugin does not take would fail the evaluation, or be silently ignored."""
    for method, sweeps in config["methods"].items():
        record = registry.method(method)
        for i, sweep in enumerate(sweeps):
            record.check_setting(sweep.get("grid", {}), f"methods.{method}[{i}].grid")
            for j, setting in enumerate(sweep.get("settings", [])):
                record.check_setting(setting, f"methods.{method}[{i}].settings[{j}]")


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
    budgets = config["visor"]["budgets"]
    for i, sweep in enumerate(config["methods"]["visor"]):
        for budget in sweep.get("grid", {}).get("training", []) + [s["training"] for s in sweep.get("settings", [])
                                                                    if "training" in s]:
            if budget not in budgets:
                raise ValueError(f"config error at methods.visor[{i}]: training {budget!r} is not a VISOR budget; "
                                 f"visor.budgets has {', '.join(budgets)}")
    for model, folders in config["visor"]["shipped"].items():
        if model not in visor_models:
            raise ValueError(f"config error at visor.shipped.{model}: VISOR is not trained for {model!r} "
                             "(visor.models)")
        for budget in folders:
            if budget not in budgets:
                raise ValueError(f"config error at visor.shipped.{model}.{budget}: not a VISOR budget; "
                                 f"visor.budgets has {', '.join(budgets)}")
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
    check_paper_profile(config, overlay, replace_workflow_config)  # a merged config's other errors follow from it
    check_visor_config(config)
    check_method_settings(config)
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


def visor_trainings(runs: list, settings: dict, viable_runs: list) -> list[tuple[str, str]]:
    """(model, training budget) of every VISOR that the configured runs (from configured_runs) evaluate, in
    order, without repeats."""
    pairs = [(model, visor_budget(settings[(method, setting)])) for model, method, setting in runs if method == "visor"]
    pairs += [(model, visor_budget(template)) for model, method, template in viable_runs if method == "visor"]
    return list(dict.fromkeys(pairs))


def expand_viable_runs(viable_runs: list, counts, configured=()) -> tuple[list, list]:
    """The runs of the `sa_layers: viable` grids (`viable_runs`: (model, method, template) from configured_runs)
    once VISOR's viable configurations are known. `counts(model, budget)`: the SA-layer counts of the viable
    configurations of `model`'s VISOR at that training budget, None while it is not provided. Returns (runs,
    pending): (model, method, setting_id) with sa_layers set to each count, in order, without repeats and without
    the `configured` runs; and (model, budget) of each VISOR not provided yet, without repeats."""
    configured, runs, pending = set(configured), [], []
    for model, method, template in viable_runs:
        budget = visor_budget(template)
        found = counts(model, budget)
        if found is None:
            pending += [] if (model, budget) in pending else [(model, budget)]
            continue
        for k in found:
            run = (model, method, setting_id({**template, "sa_layers": k}))
            if run not in configured and run not in runs:
                runs.append(run)
    return runs, pending


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


def visor_section(config: dict, stage: str, budget: str = "full") -> dict:
    """The `visor:` options `stage` (UNIVERSAL, LABEL or POLICY: train_visor, label_policy, train_policy) depends
    on (visor_model.methods.visor.config.stage_options): a change reruns that stage and what follows. Universal
    training under `budget` (a name in visor.budgets) trains that fraction of each stage's steps."""
    options = {key: config["visor"][key] for key in stage_options(stage)}
    if stage == UNIVERSAL:
        fraction = config["visor"]["budgets"][budget]
        for key in ("stage1_steps", "stage2_steps"):
            options[key] = round(options[key] * fraction)
    return options


def visor_budget(setting: dict) -> str:
    """The VISOR training budget a visor setting evaluates (its `training` key; default "full")."""
    return setting.get("training", "full")


def shipped_visor(config: dict, model: str, budget: str) -> str | None:
    """The shipped VISOR checkpoint folder of `model` at `budget`, or None where it is trained here (not shipped,
    or retrain: true)."""
    return None if config["retrain"] else config["visor"]["shipped"].get(model, {}).get(budget)


def control_steps(config: dict) -> dict:
    """The training of a continued-training control (models.<m>.control_of): VISOR's data, steps and batch at
    full budget, the learning rate of VISOR's stage 2 (where the host's weights train)."""
    visor = config["visor"]
    return {"steps": visor["stage1_steps"] + visor["stage2_steps"], "batch_size": visor["batch_size"],
            "learning_rate": visor["stage2_lr"], "warmup_steps": visor["warmup_steps"]}


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


# ----------------------------------------------------------------------------------------------------------
# job memory, from the model's size and the data (rules' mem_mb)

MB = 2**20
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Python, torch, transformers, lmms-eval and datasets in a job before any model: the offline default's evaluate
# jobs peak at about 650 MB RSS with a 1 MB model (benchmarks/evaluate/*.tsv; 632 MB for a job on all three
# benchmarks, 606 MB on one); with room for a task's documents (an evaluate job's tasks run one after another, and
# none keeps its documents once done: lmms_plugins.run).
RUNTIME_MB = 2000
TEXT_TOKENS = 256  # prompt and answer tokens beside the image: a bound per sample
SYNTHETIC_IMAGE_BYTES = 144 * 144 * 3  # a decoded synthetic scene (at most 144 px a side)
HF_IMAGE_BYTES = 1024 * 1024 * 3  # a decoded training image of an HF dataset (LLaVA-OneVision's: ~1 megapixel)
HF_ROWS_WITHOUT_LIMIT = 100_000  # train_data without a limit is sized for this many rows


@dataclass(frozen=True)
class ModelShape:
    """What a job's memory depends on: the checkpoint's safetensors (elements, file bytes) and its config.json.
    `tokens` bounds a sample's sequence: the visual tokens of the largest AnyRes grid (LLaVA-OneVision's
    anyres_max_N caps them at N + 1 crops' worth) plus TEXT_TOKENS; `max_crops` the crops the processor makes."""

    parameters: int
    file_bytes: int
    layers: int
    hidden: int
    kv_dim: int
    tokens: int
    max_crops: int
    crop_values: int  # 3 x H x W of one crop

    @classmethod
    def read(cls, folder) -> "ModelShape":
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        text, vision = config["text_config"], config["vision_config"]
        side = vision["image_size"]
        cells = max(h * w for h, w in config["image_grid_pinpoints"]) // side**2
        cap = re.fullmatch(r"anyres_max_(\d+)", config.get("vision_aspect_ratio", ""))
        per_crop = (side // vision["patch_size"]) ** 2
        heads = text["num_attention_heads"]
        head_dim = text.get("head_dim") or text["hidden_size"] // heads
        parameters, file_bytes = safetensors_size(folder)
        return cls(parameters=parameters, file_bytes=file_bytes, layers=text["num_hidden_layers"],
                   hidden=text["hidden_size"], kv_dim=text.get("num_key_value_heads", heads) * head_dim,
                   tokens=per_crop * (1 + min(cells, int(cap.group(1)) if cap else cells)) + TEXT_TOKENS,
                   max_crops=1 + cells, crop_values=3 * side * side)


def safetensors_size(folder) -> tuple[int, int]:
    """(tensor elements, file bytes) of a folder's safetensors, from their headers (8-byte length, then JSON)."""
    parameters, file_bytes = 0, 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with open(file, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        parameters += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
        file_bytes += file.stat().st_size
    return parameters, file_bytes


def _loaded_bytes(shape: ModelShape, dtype: str) -> int:
    """Host memory of loading: the mapped safetensors plus the model at `dtype` (moved to a GPU afterwards)."""
    return shape.file_bytes + shape.parameters * DTYPE_BYTES[dtype]


def _inference_bytes(shape: ModelShape, dtype: str, batch: int) -> int:
    """A batch's activations at inference: the KV cache plus a layer's hidden states (x 8: MLP and attention)."""
    return batch * shape.tokens * (2 * shape.layers * shape.kv_dim + 8 * shape.hidden) * DTYPE_BYTES[dtype]


def _pixel_bytes(shape: ModelShape, batch: int) -> int:
    """A batch's processed pixels (float32, every crop of the largest grid)."""
    return batch * shape.max_crops * shape.crop_values * 4


def visor_train_rows(config: dict) -> int:
    """Examples VISOR's universal training holds in memory: train_data's rows, else the synthetic train splits."""
    data = config["visor"]["train_data"]
    if data is not None:
        return data.get("limit") or HF_ROWS_WITHOUT_LIMIT
    return sum(config["benchmarks"][b]["train"] for b in training_benchmarks(config))


def job_mem_mb(rule: str, config: dict, shape: ModelShape | None = None) -> int:
    """mem_mb (host memory) of a job of `rule` on a model of `shape` (None for train_reference, whose model is
    made in the job and small): RUNTIME_MB + loading the model at the job's dtype + the data it holds + on CPU
    (where activations, gradients and AdamW moments live on the host) the batch's activations and the optimizer;
    on a GPU those are device memory. Bounds, not measurements: see benchmarks/<rule>/ for the measured peaks."""
    evaluation, visor = config["evaluation"], config["visor"]
    if rule == "train_reference":
        rows = sum(config["benchmarks"][b]["train"] for b in training_benchmarks(config))
        return RUNTIME_MB + math.ceil(rows * SYNTHETIC_IMAGE_BYTES / MB) + 500  # the reference model's training
    if shape is None:
        raise ValueError(f"job_mem_mb({rule!r}) needs the model's shape")
    if rule in ("evaluate", "measure_latency"):
        device, dtype = resolve_device(evaluation["device"], bool(gpu_per_job())), evaluation["dtype"]
        batch = evaluation["batch_size"] if rule == "evaluate" else 1
        data = _pixel_bytes(shape, batch) + (_inference_bytes(shape, dtype, batch) if device == "cpu" else 0)
    elif rule in ("train_visor", "label_policy", "train_policy"):
        device, dtype = resolve_device(visor["device"], bool(gpu_per_job())), visor["dtype"]
        val_rows = len(training_benchmarks(config)) * (visor["viable_per_task"] + visor["label_per_task"])
        data = val_rows * SYNTHETIC_IMAGE_BYTES + _pixel_bytes(shape, visor["inference_batch_size"])
        if device == "cpu":
            data += _inference_bytes(shape, dtype, visor["inference_batch_size"])
        if rule == "train_visor":
            image_bytes = HF_IMAGE_BYTES if visor["train_data"] is not None else SYNTHETIC_IMAGE_BYTES
            data += visor_train_rows(config) * image_bytes + _pixel_bytes(shape, visor["batch_size"])
            if device == "cpu":
                # gradients + two AdamW moments of what trains (VISOR's modules: under a third of the host's
                # size; everything in stage 2 unless the host is frozen), and the activations kept for backward
                trainable = shape.parameters // 3 if visor["stage2_freeze_host"] else shape.parameters
                data += 3 * trainable * DTYPE_BYTES[dtype]
                data += visor["batch_size"] * shape.tokens * shape.layers * 17 * shape.hidden * DTYPE_BYTES[dtype]
        if rule == "train_policy" and device == "cpu":  # the labelling rows' spliced prompts, kept for every step
            data += len(training_benchmarks(config)) * visor["label_per_task"] * shape.tokens * shape.hidden * \
                DTYPE_BYTES[dtype]
    else:
        raise ValueError(f"no memory model for rule {rule!r}")
    return RUNTIME_MB + math.ceil((_loaded_bytes(shape, dtype) + data) / MB)
