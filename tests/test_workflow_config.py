"""The workflow's config logic (visor_model.workflow_config) without Snakemake: every bad config stops with a
message naming the key; the configured runs and setting ids; VISOR's options in one place (the dataclasses of
visor_model.methods.visor.config: schema defaults, stage options and the training CLI agree with them)."""

from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from visor_model import workflow_config
from visor_model.methods.visor import config as visor_config

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def micro_config() -> dict:
    return load(REPO / ".test" / "config" / "config.yaml")


def set_in(path, value):
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def check_error(config: dict, **settings) -> str:
    with pytest.raises(ValueError) as error:
        workflow_config.check(config, SCHEMA, **settings)
    return str(error.value)


BAD_CONFIGS = [
    (set_in(["evaluation", "bacth_size"], 4),
     "config error at evaluation: Additional properties are not allowed ('bacth_size' was unexpected)"),
    (set_in(["seed"], "zero"), "config error at seed: 'zero' is not of type 'integer'"),
    (set_in(["methods", "random_drop"], [{"settings": [{"budget": 0}]}]),
     "config error at methods.random_drop[0].settings[0].budget: 0 is less than or equal to the minimum of 0"),
    (set_in(["methods", "random_drop"], [{"settings": [{"budget": 1.5}]}]),
     "config error at methods.random_drop[0].settings[0].budget: 1.5 is greater than the maximum of 1"),
    (set_in(["methods", "random_drop"], [{"settings": [{"budget": -1}]}]),
     "config error at methods.random_drop[0].settings[0].budget: -1 is less than or equal to the minimum of 0"),
    (set_in(["methods", "random_drop"], [{"settings": [{"budget": "abc"}]}]),
     "config error at methods.random_drop[0].settings[0].budget: 'abc' is not of type 'number'"),
    (set_in(["methods", "visor"], [{"settings": [{"threshold": 1.2}]}]),
     "config error at methods.visor[0].settings[0].threshold: 1.2 is greater than the maximum of 1"),
    (set_in(["methods", "pyramiddrop"], [{"settings": [{}]}]), "config error at methods: 'pyramiddrop' is not one of"),
    (set_in(["methods", "fastv"], [{"settings": [{"k": 0, "ratio": 0.5}]}]),
     "config error at methods.fastv[0].settings[0].k: 0 is less than the minimum of 1"),
    (set_in(["methods", "fastv"], [{"grid": {"k": [2], "ratio": [1.0]}}]),
     "config error at methods.fastv[0].grid.ratio[0]: 1.0 is greater than or equal to the maximum of 1"),
    (set_in(["models", "reference_ov", "family"], "llava_15"),
     "config error at models.reference_ov.family: 'llava_15' is not one of"),
    (set_in(["methods", "random_drop"], [{"models": ["gpt4"], "settings": [{"budget": 0.5}]}]),
     "config error at methods.random_drop[0].models: unknown model 'gpt4'"),
    (set_in(["benchmarks"], {}), "config error at benchmarks: {} should be non-empty"),
    (set_in(["models", "reference_next", "checkpoint"],
            {"source": "hub", "repo": "llava-hf/llava-v1.6-vicuna-7b-hf", "revision": "main"}),
     "config error at models.reference_next.checkpoint.revision: 'main' does not match"),
]


@pytest.mark.parametrize(
    "edit,message", BAD_CONFIGS,
    ids=[m.split(":")[0].removeprefix("config error at ") + str(i) for i, (_, m) in enumerate(BAD_CONFIGS)])
def test_bad_config_names_the_key(edit, message):
    config = micro_config()
    edit(config)
    assert message in check_error(config)


BAD_VISOR_CONFIGS = [
    (lambda c: c["methods"]["visor"].append({"models": ["reference_next"], "grid": {"threshold": [0.5]}}),
     "config error at methods.visor[4].models: VISOR is not trained for 'reference_next'; add it to visor.models"),
    (lambda c: c["visor"].update(label_per_task=10),
     "config error at benchmarks.synth_background.val: VISOR needs 14 val rows per benchmark"),
    (lambda c: c["methods"]["visor"].append({"grid": {"sa_layers": "all"}}),
     "config error at methods.visor[4].grid.sa_layers: 'all' is not valid under any of the given schemas"),
    (lambda c: c["methods"]["random_drop"].append({"grid": {"sa_layers": "viable"}}),
     "config error at methods.random_drop[1].grid.sa_layers: 'viable' (the viable configurations of a trained "
     "VISOR) is for method visor only"),
    (lambda c: c["visor"].update(models=["reference_ov", "tiny"]),
     "config error at visor.models: unknown model 'tiny'; configured models: reference_ov, reference_next"),
    (lambda c: c["methods"]["visor"].append({"grid": {"threshold": [0.5], "training": ["quarter"]}}),
     "config error at methods.visor[4]: training 'quarter' is not a VISOR budget; visor.budgets has full, half"),
    (lambda c: c["visor"].update(shipped={"reference_next": {"full": "checkpoints/x"}}),
     "config error at visor.shipped.reference_next: VISOR is not trained for 'reference_next' (visor.models)"),
    (lambda c: c["visor"].update(shipped={"reference_ov": {"quarter": "checkpoints/x"}}),
     "config error at visor.shipped.reference_ov.quarter: not a VISOR budget; visor.budgets has full, half"),
    (lambda c: c["visor"].update(budgets={"half": 0.5}),
     "config error at visor.budgets: 'full' is a required property"),
    (lambda c: c["models"].update(control={"family": "llava_onevision", "control_of": "reference_next",
                                           "checkpoint": {"source": "train"}}),
     "config error at models.control.control_of: 'reference_next' must be a configured model of the same family "
     "(llava_onevision)"),
]


@pytest.mark.parametrize("edit,message", BAD_VISOR_CONFIGS, ids=["model-without-visor", "val-too-small",
                                                                 "sa_layers-not-viable-or-list", "viable-outside-visor",
                                                                 "unknown-visor-model", "unknown-budget",
                                                                 "shipped-without-visor", "shipped-unknown-budget",
                                                                 "budgets-without-full", "control-of-other-family"])
def test_bad_visor_config_names_the_key(edit, message):
    config = micro_config()
    edit(config)
    assert message in check_error(config)


def test_the_shipped_configs_pass_and_get_their_defaults():
    for path in (REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml", REPO / "config" / "rehearsal.yaml",
                 REPO / ".test" / "config" / "config.yaml"):
        config = load(path)
        assert workflow_config.check(config, SCHEMA, overlay=config, replace_workflow_config=True) is config
        assert config["retrain"] in (False, True) and "resamples" in config["audit"]
        assert set(config["visor"]) >= set(visor_config.option_defaults()), path


def test_defaults_are_those_of_snakemake_validate():
    """fill_defaults is snakemake.utils.validate's default filling: the same config, key order included."""
    from snakemake.utils import validate

    for path in (REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml", REPO / "config" / "rehearsal.yaml",
                 REPO / ".test" / "config" / "config.yaml"):
        ours, theirs = load(path), load(path)
        workflow_config.fill_defaults(ours, workflow_config.load_schema(SCHEMA))
        validate(theirs, str(SCHEMA))
        assert ours == theirs
        assert yaml.safe_dump(ours, sort_keys=False) == yaml.safe_dump(theirs, sort_keys=False)


def test_defaults_are_copies_not_shared_between_configs():
    schema = workflow_config.load_schema(SCHEMA)
    first, second = micro_config(), micro_config()
    for config in (first, second):
        del config["latency"]
        workflow_config.fill_defaults(config, schema)
    first["latency"]["samples"] = 99
    assert second["latency"]["samples"] == 8 and first["latency"] is not second["latency"]


def merged(workflow: dict, overlay: dict) -> dict:
    """`--configfile overlay` without --replace-workflow-config: Snakemake's recursive update."""
    result = copy.deepcopy(workflow)
    for key, value in overlay.items():
        result[key] = (merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict)
                       else value)
    return result


def test_paper_profile_merged_into_the_offline_config_stops_with_the_fix():
    paper = load(REPO / "config" / "paper.yaml")
    config = merged(load(REPO / "config" / "config.yaml"), paper)
    message = check_error(config, overlay=paper, replace_workflow_config=False)
    assert message == ("config error at models: reference_next, reference_ov, reference_ov_continued came from the "
                       "workflow's "
                       "config/config.yaml, merged with the --configfile of the paper profile; run with "
                       "--replace-workflow-config to use only that file")
    workflow_config.check(load(REPO / "config" / "paper.yaml"), SCHEMA, overlay=paper, replace_workflow_config=True)
    workflow_config.check(load(REPO / "config" / "config.yaml"), SCHEMA, overlay=None, replace_workflow_config=False)


def test_paper_profile_merged_names_the_extra_benchmarks_when_the_models_are_the_paper_ones():
    paper = load(REPO / "config" / "paper.yaml")
    offline = load(REPO / "config" / "config.yaml")
    offline["models"] = copy.deepcopy(paper["models"])
    offline["methods"] = copy.deepcopy(paper["methods"])
    offline["visor"]["models"] = paper["visor"]["models"]
    offline["benchmarks"]["synth_extra"] = {"source": "synthetic", "test": 4}
    message = check_error(merged(offline, paper), overlay=paper, replace_workflow_config=False)
    assert message.startswith("config error at benchmarks: synth_extra came from the workflow's config/config.yaml")


# --- the configured runs ----------------------------------------------------------------------------------


def test_setting_ids():
    assert workflow_config.setting_id({"budget": 0.2, "seed": 0}) == "budget-0.2_seed-0"
    assert workflow_config.setting_id({"seed": 0, "budget": 0.2}) == "budget-0.2_seed-0"
    assert workflow_config.setting_id({}) == "default"


def test_configured_runs_of_the_micro_config():
    config = workflow_config.check(micro_config(), SCHEMA)
    runs, settings, viable_runs = workflow_config.configured_runs(config)
    assert runs == [
        ("reference_ov", "llava_full", "default"), ("reference_next", "llava_full", "default"),
        ("reference_ov_continued", "llava_full", "default"),
        ("reference_ov", "random_drop", "budget-0.2_seed-0"), ("reference_next", "random_drop", "budget-0.2_seed-0"),
        ("reference_next", "hired", "budget-0.2_mode-paper"),
        ("reference_next", "hired", "budget-0.2_mode-reference_code"),
        ("reference_ov", "visor", "threshold-0.9"), ("reference_ov", "visor", "threshold-0.9_token_budget-0.5"),
        ("reference_ov", "visor", "threshold-0.9_training-half"),
    ]
    assert settings[("hired", "budget-0.2_mode-paper")] == {"budget": 0.2, "mode": "paper"}
    assert viable_runs == [("reference_ov", "visor", {})]
    assert workflow_config.setting_of(settings, viable_runs, "visor", "sa_layers-3") == {"sa_layers": 3}
    assert workflow_config.setting_of(settings, viable_runs, "visor", "threshold-0.9") == {"threshold": 0.9}
    with pytest.raises(ValueError, match="'sa_layers-3' is not a configured setting of method hired"):
        workflow_config.setting_of(settings, viable_runs, "hired", "sa_layers-3")
    constraint = workflow_config.setting_constraint(settings, viable_runs)
    assert constraint.endswith("|sa_layers\\-[0-9]+") and r"|budget-0\.2_seed-0|" in constraint


def test_viable_grid_combined_with_other_keys():
    sweep = {"grid": {"sa_layers": "viable", "token_budget": [0.5, 0.25]}}
    assert workflow_config.sweep_settings(sweep) == []
    templates = workflow_config.viable_templates(sweep)
    assert templates == [{"token_budget": 0.5}, {"token_budget": 0.25}]
    pattern = workflow_config.viable_pattern(templates[0], group=True)
    assert re.fullmatch(pattern, "sa_layers-2_token_budget-0.5").group(1) == "2"
    assert not re.fullmatch(pattern, "sa_layers-2_token_budget-0.25")


def test_viable_runs_expand_once_the_visor_is_provided():
    """The one expansion of `sa_layers: viable` grids that the evaluations (common.smk) and the latency jobs
    (efficiency.smk) read: configured runs and repeats left out, a VISOR not provided yet pending."""
    viable_runs = [("ov", "visor", {}), ("ov", "visor", {"token_budget": 0.5}), ("ov", "visor", {}),
                   ("next", "visor", {"training": "half"}), ("next", "visor", {"training": "half", "threshold": 1})]
    provided = {("ov", "full"): [1, 3]}
    runs, pending = workflow_config.expand_viable_runs(viable_runs, lambda model, budget: provided.get((model, budget)),
                                                       configured=[("ov", "visor", "sa_layers-3")])
    assert runs == [("ov", "visor", "sa_layers-1"), ("ov", "visor", "sa_layers-1_token_budget-0.5"),
                    ("ov", "visor", "sa_layers-3_token_budget-0.5")]
    assert pending == [("next", "half")]
    provided[("next", "half")] = []  # provided, no viable configuration
    assert workflow_config.expand_viable_runs(viable_runs[3:], lambda m, b: provided[(m, b)]) == ([], [])


def test_rule_helpers():
    config = workflow_config.check(micro_config(), SCHEMA)
    assert workflow_config.training_benchmarks(config) == ["synth_background", "synth_marker"]
    assert workflow_config.checkpoint_source(config, "reference_ov") == "train"
    assert workflow_config.checkpoint_source(config, "reference_next") == "shipped"
    assert workflow_config.checkpoint_source({**config, "retrain": True}, "reference_next") == "train"
    assert workflow_config.claims_file(config, "/repo") == "/repo/config/claims.yaml"
    assert len(workflow_config.config_sha256(config)) == 64


# --- VISOR's options: one place --------------------------------------------------------------------------


def test_schema_defaults_are_the_dataclass_defaults():
    schema = workflow_config.load_schema(SCHEMA)
    visor = schema["properties"]["visor"]["properties"]
    workflow_only = {"models", "budgets", "shipped"}  # which VISORs the workflow trains: not dataclass options
    assert set(visor) - workflow_only == set(visor_config.option_defaults())
    assert {key: spec["default"] for key, spec in visor.items() if key not in workflow_only} == \
        visor_config.option_defaults()
    for key, spec in visor.items():
        choices = next((f.metadata["choices"] for f in visor_config.option_fields() if f.name == key), None)
        if choices:
            assert spec["enum"] == list(choices), key


def test_each_stage_reads_its_options_from_the_dataclasses():
    config = workflow_config.check(micro_config(), SCHEMA)
    universal = workflow_config.visor_section(config, workflow_config.UNIVERSAL)
    assert tuple(universal) == ("stage1_steps", "stage2_steps", "batch_size", "stage1_lr", "stage2_lr",
                                "warmup_steps", "order", "curriculum", "stage2_freeze_host", "eval_every",
                                "curve_per_task", "train_data", "ca_layers", "sa_candidates", "conv_kernel",
                                "gate_init", "ca_init", "ca_rope", "router_hidden", "viable_per_task",
                                "inference_batch_size", "device", "dtype")
    assert tuple(workflow_config.visor_section(config, workflow_config.LABEL)) == (
        "viable_per_task", "label_per_task", "inference_batch_size", "label_reference", "label_tolerance", "device",
        "dtype")
    assert tuple(workflow_config.visor_section(config, workflow_config.POLICY)) == (
        "router_loss", "router_steps", "router_lr", "router_batch_size", "device", "dtype")
    assert universal["stage1_steps"] == 2 and universal["inference_batch_size"] == 8
    config["visor"]["budgets"]["half"] = 0.5
    half = workflow_config.visor_section(config, workflow_config.UNIVERSAL, "half")
    assert (half["stage1_steps"], half["stage2_steps"]) == (1, round(config["visor"]["stage2_steps"] * 0.5))
    assert {k: v for k, v in half.items() if not k.endswith("_steps")} == {
        k: v for k, v in universal.items() if not k.endswith("_steps")}
    every = {key for stage in visor_config.STAGES for key in visor_config.stage_options(stage)}
    assert every == set(visor_config.option_defaults()) - {"threads"}
    universal_config, architecture, policy, device = visor_config.visor_options(universal, seed=3, threads=2)
    assert device == visor_config.DeviceConfig("auto", "float32") and universal_config.train_data is None
    assert (universal_config.stage1_steps, universal_config.seed, universal_config.threads) == (2, 3, 2)
    assert architecture == {"seed": 3, **{k: universal[k] for k in visor_config.ARCHITECTURE_OPTIONS}}
    assert policy.viable_per_task == 4 and policy.label_per_task == visor_config.PolicyConfig.label_per_task
    with pytest.raises(ValueError, match="unknown VISOR stage"):
        visor_config.stage_options("evaluate")


def parse(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    visor_config.add_arguments(parser)
    return parser.parse_args(list(args))


def test_training_cli_flags_come_from_the_dataclass_fields():
    args = parse()
    universal, architecture, policy, device = visor_config.visor_options(visor_config.arguments_options(args),
                                                                         args.seed, args.threads)
    assert universal == visor_config.UniversalConfig() and policy == visor_config.PolicyConfig()
    assert device == visor_config.DeviceConfig()
    assert visor_config.VisorConfig(n_layers=6, **architecture) == visor_config.VisorConfig(n_layers=6)
    args = parse("--stage1-steps", "3", "--stage2-steps", "4", "--batch-size", "2", "--seed", "5", "--threads", "2",
                 "--order", "joint", "--no-curriculum", "--viable-per-task", "6", "--label-per-task", "7",
                 "--router-steps", "8", "--router-lr", "0.01", "--ca-layers", "0", "--sa-candidates", "1", "4",
                 "--no-ca-rope", "--ca-init", "random", "--stage2-freeze-host", "--device", "cuda",
                 "--dtype", "bfloat16", "--dataset", "/data/ov", "--dataset-limit", "9", "--label-reference",
                 "largest", "--label-tolerance", "0.5", "--router-loss", "bce")
    universal, architecture, policy, device = visor_config.visor_options(visor_config.arguments_options(args),
                                                                         args.seed, args.threads)
    assert universal.stage2_freeze_host and device == visor_config.DeviceConfig("cuda", "bfloat16")
    assert universal.train_data == visor_config.TrainData("/data/ov", None, "train", 9, None)
    assert (universal.stage1_steps, universal.stage2_steps, universal.batch_size, universal.seed, universal.threads,
            universal.order, universal.curriculum) == (3, 4, 2, 5, 2, "joint", False)
    assert (policy.label_reference, policy.label_tolerance, policy.router_loss) == ("largest", 0.5, "bce")
    assert (policy.viable_per_task, policy.label_per_task, policy.router_steps, policy.router_lr) == (6, 7, 8, 0.01)
    config = visor_config.VisorConfig(n_layers=6, **architecture)
    assert (config.ca_layers, config.sa_candidates, config.ca_rope, config.ca_init, config.seed) == (
        (0,), (1, 4), False, "random", 5)
    with pytest.raises(SystemExit):
        parse("--order", "largest")


def test_config_modules_import_without_torch():
    """Parsing the Snakefile imports these: neither may pull in torch, transformers or Snakemake."""
    code = ("import sys\n"
            "for name in ('torch', 'transformers', 'snakemake'):\n"
            "    sys.modules[name] = None\n"
            "import visor_model.workflow_config, visor_model.methods.visor.config\n"
            "print(visor_model.methods.visor.config.stage_options('policy'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "router_steps" in result.stdout


def test_visor_trainings_and_controls_follow_the_runs():
    config = micro_config()
    config["visor"]["budgets"] = {"full": 1.0, "half": 0.5}
    config["methods"]["visor"].append({"grid": {"threshold": [0.9], "training": ["half"]}})
    config = workflow_config.check(config, SCHEMA)
    runs, settings, viable = workflow_config.configured_runs(config)
    assert workflow_config.visor_trainings(runs, settings, viable) == [("reference_ov", "full"),
                                                                       ("reference_ov", "half")]
    assert workflow_config.visor_budget(settings[("visor", "threshold-0.9_training-half")]) == "half"
    assert workflow_config.shipped_visor(config, "reference_ov", "full") is None
    config["visor"]["shipped"] = {"reference_ov": {"full": "checkpoints/visor"}}
    assert workflow_config.shipped_visor(config, "reference_ov", "full") == "checkpoints/visor"
    assert workflow_config.shipped_visor(config, "reference_ov", "half") is None
    config["retrain"] = True
    assert workflow_config.shipped_visor(config, "reference_ov", "full") is None  # retrain trains it from the seed
    steps = workflow_config.control_steps(config)
    assert steps == {"steps": config["visor"]["stage1_steps"] + config["visor"]["stage2_steps"],
                     "batch_size": config["visor"]["batch_size"], "learning_rate": config["visor"]["stage2_lr"],
                     "warmup_steps": config["visor"]["warmup_steps"]}
