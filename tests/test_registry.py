"""The method registry (visor_model.methods.registry) is the one place that names a method: the manifests, the
config checks, the summary's setting columns, the report's series and styles and the sizing tool read it, the
schema, pyproject's entry points and the plugins agree with it, and the accountant sums what each method reports
of its own cost. A toy method added through the registry reaches every reader; a forgotten piece fails naming it."""

from __future__ import annotations

import copy
import importlib
import inspect
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fake_results import records

from visor_model import sizing, workflow_config
from visor_model.audit import analysis, tables
from visor_model.efficiency.accounting import FlopAccountant, MethodCost, Overhead, SampleTokens
from visor_model.efficiency.flops import FlopTerms
from visor_model.methods import registry

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PLUGIN_HOOKS = ("check_args", "load_model", "build_runner", "build_reducer")
SHARED_ARGS = {"self", "pretrained", "revision", "dtype", "method_args"}


def entry_point_disagreements(pyproject: dict) -> list[str]:
    """Where pyproject's `lmms_eval.models` entry points and the registry's ids differ."""
    points = pyproject["project"]["entry-points"]["lmms_eval.models"]
    wanted = {i: f"lmms_plugins.manifests:{i}" for i in registry.method_ids()}
    problems = [f"method {i!r} has no entry point {wanted[i]!r} in pyproject.toml" for i in wanted
                if points.get(i) != wanted[i]]
    return problems + [f"pyproject.toml's entry point {name!r} has no registry record" for name in points
                       if name not in wanted]


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def load_config(path: Path = REPO / "config" / "config.yaml") -> dict:
    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------------------------------------
# the registry agrees with the files it cannot generate


def test_the_registry_imports_the_standard_library_only():
    """lmms-eval imports it at start-up (the manifests), the workflow at every parse (-S: without site's hooks)."""
    probe = ("import sys, visor_model.methods.registry; print(' '.join(sorted({m.split('.')[0] for m in sys.modules} "
             "- set(sys.stdlib_module_names) - set(sys.builtin_module_names) - {'__main__'})))")
    result = subprocess.run([sys.executable, "-S", "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["visor_model"]


def test_pyproject_entry_points_are_the_registry_ids():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert entry_point_disagreements(pyproject) == []


def test_schema_method_enum_and_setting_keys_agree_with_the_registry():
    assert registry.schema_disagreements(load_schema()) == []


def test_manifests_are_made_from_the_records():
    from lmms_plugins import manifests

    for record in registry.METHODS:
        manifest = getattr(manifests, record.id)
        assert (manifest.model_id, manifest.simple_class_path) == (record.id, record.plugin)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        manifests.nope  # noqa: B018


def plugin_defaults(plugin: type) -> dict[str, object]:
    """{argument: default} of a plugin class's method hooks (its own or inherited)."""
    defaults = {}
    for hook in PLUGIN_HOOKS:
        for name, parameter in inspect.signature(getattr(plugin, hook)).parameters.items():
            if name not in SHARED_ARGS and parameter.kind is parameter.POSITIONAL_OR_KEYWORD:
                defaults.setdefault(name, parameter.default)
    return defaults


def resolve(dotted: str):
    """The object a dotted path names: its longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("record", registry.METHODS, ids=registry.method_ids())
def test_each_records_plugin_takes_its_settings_with_its_defaults(record):
    defaults = plugin_defaults(resolve(record.plugin))
    for setting in record.settings:
        assert setting.name in defaults, f"{record.plugin} takes no argument {setting.name!r}"
        expected = None if setting.default == registry.REQUIRED else setting.default  # the plugin then refuses
        assert defaults[setting.name] == expected, (record.id, setting.name)


@pytest.mark.parametrize("record", registry.METHODS, ids=registry.method_ids())
def test_each_records_overhead_is_where_it_says(record):
    """A method with work of its own names where it is computed (not the default of no overhead)."""
    if record.overhead is None:
        assert record.id in ("llava_full", "random_drop", "downsample")  # the methods without work of their own
        return
    target = resolve(record.overhead)
    assert callable(target) and target is not MethodCost.overhead_flops, record.overhead


def test_series_are_unique_and_every_reader_shows_them_in_registry_order():
    series = registry.all_series()
    for field in ("id", "label", "colour"):
        values = [getattr(s, field) for s in series]
        assert len(set(values)) == len(values), f"two series share a {field}"
    assert analysis.SERIES == tuple(s.id for s in series)
    assert list(analysis.PALETTE) == [s.label for s in series]
    assert tables.summary_table(records(n=3)[0][:1]).columns.tolist()[4:18] == list(registry.SUMMARY_ORDER)


def test_kept_fractions_of_the_shipped_rules():
    assert sizing.kept_fraction("hired", {"budget": 0.2}) == 0.2
    assert sizing.kept_fraction("random_drop", {}) == 1.0
    assert sizing.kept_fraction("downsample", {"mode": "base_only"}) == 1 / 5
    assert sizing.kept_fraction("downsample", {"mode": "scale", "scale": 0.5}) == 0.25
    assert sizing.kept_fraction("visor", {"sa_layers": 1, "token_budget": 0.3}) == 0.3
    assert sizing.kept_fraction("fastv", {"k": 2, "ratio": 0.5}) == 1.0  # an upper bound: pruned inside the LLM


# ----------------------------------------------------------------------------------------------------------
# a toy method: its record is all the readers need


TOY = registry.Method(
    id="toy", plugin="toy_plugins.ToyLlava",
    settings=(registry.Setting("budget", "number", registry.REQUIRED), registry.Setting("knob", "integer", 3)),
    series=(registry.Series("toy", "toy method", "#123456", "8"),
            registry.Series("toy_big", "toy method (big knob)", "#654321", "1")),
    series_of=lambda row: "toy_big" if (row.get("knob") or 0) > 5 else "toy",
    kept_fraction=lambda setting: setting["budget"] / 2,
    overhead="test_registry.ToyCost.overhead_flops",
)


@dataclass(frozen=True)
class ToyCost(MethodCost):
    """The toy's own work: a scoring pass outside the host (selection) and a ranking inside the LLM prefill."""

    part: str = "rank"

    def overhead_flops(self, shape, tokens, causal_mode="causal"):
        return Overhead(selection=FlopTerms.of({"scores": 7 * tokens.n_crops}), projector_tokens=2,
                        prefill=FlopTerms.of({f"{self.part}.scores": 11 * tokens.n_text}))


@pytest.fixture
def toy(monkeypatch):
    """The registry with the toy's record; `analysis`, which lays out its series at import, re-read."""
    monkeypatch.setattr(registry, "METHODS", registry.METHODS + (TOY,))
    importlib.reload(analysis)
    yield TOY
    monkeypatch.undo()
    importlib.reload(analysis)


def toy_schema(tmp_path: Path) -> Path:
    """The schema with the toy's config entry: its id in the methods enum, its new setting key."""
    schema = load_schema()
    schema["properties"]["methods"]["propertyNames"]["enum"].append("toy")
    schema["$defs"]["setting"]["properties"]["knob"] = {"type": "integer", "minimum": 0}
    grid = schema["properties"]["methods"]["additionalProperties"]["items"]["properties"]["grid"]["properties"]
    grid["knob"] = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/setting/properties/knob"}}
    path = tmp_path / "config.schema.yaml"
    path.write_text(yaml.safe_dump(schema, sort_keys=False))
    return path


def test_a_toy_method_reaches_every_reader_through_its_record(toy, tmp_path):
    from lmms_plugins import manifests

    # manifest
    assert (manifests.toy.model_id, manifests.toy.simple_class_path) == ("toy", "toy_plugins.ToyLlava")
    # config: the schema must list it (named when it does not), then a sweep of it is checked and run
    assert "method 'toy' has a registry record but is not in the schema's methods enum" in \
        "\n".join(registry.schema_disagreements(load_schema()))
    schema = toy_schema(tmp_path)
    assert registry.schema_disagreements(yaml.safe_load(schema.read_text())) == []
    config = load_config()
    config["methods"]["toy"] = [{"models": ["reference_ov"], "grid": {"budget": [0.2, 0.4], "knob": [7]}}]
    workflow_config.check(config, schema)
    runs, _, _ = workflow_config.configured_runs(config)
    assert [run for run in runs if run[1] == "toy"] == [("reference_ov", "toy", "budget-0.2_knob-7"),
                                                       ("reference_ov", "toy", "budget-0.4_knob-7")]
    # summary: its setting key is a column
    evaluation = copy.deepcopy(records(n=3)[0][0])
    evaluation.update(method="toy", setting={"budget": 0.2, "knob": 7}, setting_id="budget-0.2_knob-7")
    summary = tables.summary_table([evaluation])
    columns = list(registry.setting_columns())
    assert columns[-1] == "knob" and summary.columns.tolist()[4:4 + len(columns)] == columns
    assert summary["knob"].tolist() == [7]
    # report: its series, label, colour and marker
    with_series = analysis.add_series(summary)
    assert with_series["series"].tolist() == ["toy_big"]
    assert with_series["series_label"].tolist() == ["toy method (big knob)"]
    assert analysis.series_key({"method": "toy", "knob": float("nan")}) == "toy"
    assert analysis.SERIES[-2:] == ("toy", "toy_big") and analysis.colour("toy method") == "#123456"
    assert analysis.MARKERS["toy method (big knob)"] == "1"
    # sizing: its kept fraction, and its runs in the estimate
    assert sizing.kept_fraction("toy", {"budget": 0.4}) == 0.2
    without = load_config()
    workflow_config.check(without, schema)
    with_toy, base = sizing.estimate(config)["evaluate"], sizing.estimate(without)["evaluate"]
    assert with_toy["jobs"] == base["jobs"] + 2 and with_toy["gpu_hours"] > base["gpu_hours"]


def test_the_accountant_adds_what_a_method_reports_of_its_own_cost():
    shape = sizing.SHAPES["llava_onevision"]
    tokens = SampleTokens(n_text=20, n_visual=300, n_crops=5, produced=3)
    host = FlopAccountant(shape).sample(tokens)
    toy = FlopAccountant(shape, (ToyCost(),)).sample(tokens)
    assert toy.selection.total == 7 * 5 and host.selection.total == 0
    assert toy.part("rank") == 11 * 20 and toy.llm_prefill.total == host.llm_prefill.total + 11 * 20
    assert toy.projector.total > host.projector.total  # two more tokens through the projector
    assert toy.total - host.total == 7 * 5 + 11 * 20 + toy.projector.total - host.projector.total
    assert FlopAccountant(shape, (ToyCost(), ToyCost())).sample(tokens).selection.total == 2 * 7 * 5  # summed


# ----------------------------------------------------------------------------------------------------------
# a forgotten piece fails, naming it


@pytest.mark.parametrize("change,message", [
    ({"kept_fraction": None}, "method 'toy' .*: no kept_fraction rule"),
    ({"series": ()}, r"method 'toy' .*: no series"),
    ({"series_of": None}, "2 series need a series_of rule"),
    ({"plugin": "ToyLlava"}, "plugin must be the lmms-eval class's dotted path"),
    ({"settings": (registry.Setting("budget", "number"), registry.Setting("budget", "number"))},
     "a setting is declared twice"),
])
def test_a_record_missing_a_piece_names_it(change, message):
    fields = {name: getattr(TOY, name) for name in ("id", "plugin", "settings", "series", "kept_fraction",
                                                    "series_of", "overhead")}
    with pytest.raises(ValueError, match=message):
        registry.Method(**{**fields, **change})


def test_a_setting_of_an_unknown_type_is_refused():
    with pytest.raises(ValueError, match="setting knob: type must be one of number, integer, string"):
        registry.Setting("knob", "float")


def test_sizing_a_method_without_a_record_fails_naming_the_registry():
    with pytest.raises(ValueError, match="no method 'toy' in visor_model.methods.registry.METHODS"):
        sizing.kept_fraction("toy", {"budget": 0.2})


def test_a_record_the_schema_does_not_know_is_named(toy):
    problems = "\n".join(registry.schema_disagreements(load_schema()))
    assert "method 'toy' has a registry record but is not in the schema's methods enum" in problems
    assert "setting 'knob' (a registry record's) is not in the schema's $defs.setting" in problems
    with pytest.raises(ValueError, match="and visor_model.methods.registry disagree:\n.*'toy'"):
        workflow_config.check(load_config(), SCHEMA)


def test_a_schema_method_without_a_record_is_named(tmp_path):
    schema = load_schema()
    schema["properties"]["methods"]["propertyNames"]["enum"].append("toy")
    assert registry.schema_disagreements(schema) == [
        "the schema's methods enum names 'toy', which has no record in visor_model.methods.registry.METHODS"]


def test_a_setting_type_the_schema_contradicts_is_named():
    schema = load_schema()
    schema["$defs"]["setting"]["properties"]["seed"] = {"type": "number"}
    assert registry.schema_disagreements(schema) == [
        "setting 'seed' has type integer in the registry but number in the schema's $defs.setting"]


def test_two_records_giving_one_key_two_types_are_named(monkeypatch):
    other = registry.Method(id="other", plugin="x.Other", settings=(registry.Setting("budget", "integer"),),
                            series=(registry.Series("other", "other", "#000001", "o"),), kept_fraction=lambda s: 1.0)
    monkeypatch.setattr(registry, "METHODS", registry.METHODS + (other,))
    with pytest.raises(ValueError, match="setting 'budget' has type number for random_drop but integer for other"):
        registry.setting_types()


@pytest.mark.parametrize("where,setting", [("grid", {"k": [2], "ratio": [0.5], "budget": [0.2]}),
                                           ("settings", [{"k": 2, "ratio": 0.5, "budget": 0.2}])])
def test_a_config_setting_key_the_record_does_not_declare_is_named(where, setting):
    config = load_config()
    config["methods"]["fastv"] = [{where: setting}]
    at = "grid" if where == "grid" else r"settings\[0\]"
    with pytest.raises(ValueError, match=rf"config error at methods\.fastv\[0\]\.{at}\.budget: method fastv has no "
                                         "setting 'budget'; its settings: k, ratio, score"):
        workflow_config.check(config, SCHEMA)


def test_a_sample_field_no_method_of_the_accountant_takes_is_named():
    shape = sizing.SHAPES["llava_onevision"]
    routed = SampleTokens(n_text=20, n_visual=30, n_crops=1, roles=("ca",) + ("sa",) * 23, routed=True)
    with pytest.raises(ValueError, match="the sample carries routed, but none of this accountant's methods takes it"):
        FlopAccountant(shape, (ToyCost(),)).sample(routed)


def test_a_prefill_overhead_outside_the_record_columns_is_named():
    shape = sizing.SHAPES["llava_onevision"]
    with pytest.raises(ValueError, match="prefill overhead term 'toy.scores' is in no part of PREFILL_PARTS"):
        FlopAccountant(shape, (ToyCost(part="toy"),)).sample(SampleTokens(n_text=20, n_visual=30, n_crops=1))


def test_manifests_imported_before_lmms_eval_still_register_every_method():
    """Importing the manifests first makes lmms-eval build its registry while this module is half-imported (a
    cycle): every method must still be found, in a fresh interpreter where nothing else was imported before."""
    code = ("import lmms_plugins.manifests\nfrom lmms_eval.models import get_model\n"
            "from visor_model.methods import registry\n"
            "print(sorted(m for m in registry.method_ids() if get_model(m)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == str(sorted(registry.method_ids()))
