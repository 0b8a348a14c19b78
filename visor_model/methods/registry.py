"""The method registry: one record per efficiency method, the one place that names a method.

A record (`Method`) holds what the rest of the project needs to know of a method without importing it:

    id              the lmms-eval model id (`--model hired`), the key of `methods:` in a config and of the records
    plugin          the lmms-eval model class, as a dotted path (`lmms_plugins.manifests` makes its manifest)
    settings        the setting keys a config may give it (`Setting`: JSON type, the plugin's default)
    series          the curves the report draws for it (`Series`: id, label, colour, marker), in the report's order
    series_of       which of its series a result row belongs to (a function of the row; None: its one series)
    kept_fraction   the share of visual tokens the LLM sees at a setting (the sizing tool's estimate)
    overhead        where its own FLOPs beyond the host's forward are computed (a dotted path to an
                    `overhead_flops`; None: it adds none). The accountant (`visor_model.efficiency.accounting`)
                    sums what each method's `flop_cost(model)` reports and names no method.

Who reads it: `lmms_plugins.manifests` (manifests), `visor_model.workflow_config` (a config's methods and their
setting keys; the schema must agree: `schema_disagreements`), `visor_model.audit.tables` (the summary's setting
columns: `setting_columns`), `visor_model.audit.analysis` (series, labels, colours, markers) and
`visor_model.sizing` (`kept_fraction`). pyproject.toml's `lmms_eval.models` entry points stay static, and the
plugins' arguments are their own; tests/test_registry.py checks both against the records.

A new method is four places: its module (a `TokenReducer` or runner with its `flop_cost`, and its plugin class),
its record in `METHODS` below, its config entry (config/*.yaml; workflow/schemas/config.schema.yaml's method enum
and any new setting key), its tests. Forgetting one fails a test or the config check, naming it.

Light on purpose (standard library only): lmms-eval imports it at start-up through the manifests, the workflow on
every parse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

JSON_TYPES = ("number", "integer", "string")
REQUIRED = "required"  # a setting's default when the plugin refuses to run without it


@dataclass(frozen=True)
class Setting:
    """One setting key a method takes. type: its JSON type in the config ("number", "integer", "string");
    default: the plugin's value when the setting is not given (None: derived or unused; REQUIRED: must be given);
    column: whether summary.csv has it as a setting column."""

    name: str
    type: str
    default: object = None
    column: bool = True  # a setting column of the summary (False: the summary shows it otherwise)

    def __post_init__(self):
        if self.type not in JSON_TYPES:
            raise ValueError(f"setting {self.name}: type must be one of {', '.join(JSON_TYPES)}, got {self.type!r}")


@dataclass(frozen=True)
class Series:
    """One curve of the report: its id (the `series` column), label (legends, tables), colour and marker."""

    id: str
    label: str
    colour: str
    marker: str


@dataclass(frozen=True)
class Method:
    """One method's record (see the module docstring). Only `series_of` (one series) and `overhead` (no work of
    its own) may be left out; a missing piece is an error naming it (without `kept_fraction` the sizing tool would
    have to guess)."""

    id: str
    plugin: str
    settings: tuple[Setting, ...]
    series: tuple[Series, ...]
    kept_fraction: Callable[[Mapping], float]
    series_of: Callable[[Mapping], str] | None = None
    overhead: str | None = None

    def __post_init__(self):
        where = f"method {self.id!r} (visor_model.methods.registry)"
        if "." not in (self.plugin or ""):
            raise ValueError(f"{where}: plugin must be the lmms-eval class's dotted path, got {self.plugin!r}")
        if not self.series:
            raise ValueError(f"{where}: no series (the report's curve: id, label, colour, marker)")
        if not callable(self.kept_fraction):
            raise ValueError(f"{where}: no kept_fraction rule (the share of visual tokens the LLM sees at a setting, "
                             "for visor_model.sizing)")
        if len(self.series) > 1 and self.series_of is None:
            raise ValueError(f"{where}: {len(self.series)} series need a series_of rule (which one a row belongs to)")
        names = self.setting_names
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: a setting is declared twice: {', '.join(names)}")

    @property
    def setting_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.settings)

    def series_key(self, row: Mapping) -> str:
        """The series id of a result row of this method (unset settings: absent or None)."""
        key = self.series_of(row) if self.series_of is not None else self.series[0].id
        if key not in {s.id for s in self.series}:
            raise ValueError(f"method {self.id!r}: series_of gave {key!r}, not one of its series")
        return key

    def check_setting(self, setting: Mapping, where: str) -> None:
        """A config setting's keys must be this method's settings (ValueError naming the key and `where`)."""
        for key in setting:
            if key not in self.setting_names:
                raise ValueError(f"config error at {where}.{key}: method {self.id} has no setting {key!r}; its "
                                 f"settings: {', '.join(self.setting_names) or 'none'} "
                                 "(visor_model.methods.registry)")


# ----------------------------------------------------------------------------------------------------------
# the rules the records name: kept fraction (sizing) and series of a row (report)


def budget_fraction(setting: Mapping) -> float:
    """Methods that keep a `budget` share of the visual tokens (default all)."""
    return setting.get("budget", 1.0)


def token_budget_fraction(setting: Mapping) -> float:
    """All visual tokens, or a token reduction's `token_budget` in front (VISOR-TR). FastV and VISOR's reduced
    configurations are costed at full compute: an upper bound."""
    return setting.get("token_budget", 1.0)


def downsample_fraction(setting: Mapping) -> float:
    """Downsample: its budget, the square of its scale, or one crop of a 2 x 2 grid's five (base_only). The vision
    tower's saving is not estimated (every crop is charged)."""
    if setting.get("mode") == "base_only":
        return 1 / 5
    return setting["budget"] if setting.get("budget") is not None else setting.get("scale", 1.0) ** 2


def hired_series(row: Mapping) -> str:
    return "hired_code" if row.get("mode") == "reference_code" else "hired_paper"


def visionzip_series(row: Mapping) -> str:
    return "visionzip_mean" if row.get("merge") == "mean" else "visionzip"


def prumerge_series(row: Mapping) -> str:
    return "prumerge" if row.get("variant") == "prumerge" else "prumerge_plus"


def visor_series(row: Mapping) -> str:
    if row.get("token_budget") is not None:
        return "visor_tr"
    if row.get("threshold") is not None:
        return "visor_policy"
    return "visor_fixed"


# ----------------------------------------------------------------------------------------------------------
# the records, in the report's order of series (colour-blind-safe Okabe-Ito hues, one per series)

PLUGINS = "lmms_plugins.models"

METHODS: tuple[Method, ...] = (
    Method(
        id="llava_full", plugin=f"{PLUGINS}.LlavaFull", settings=(),
        series=(Series("full", "full model", "#000000", "*"),),
        kept_fraction=token_budget_fraction,
    ),
    Method(
        id="random_drop", plugin=f"{PLUGINS}.RandomDropLlava",
        settings=(Setting("budget", "number", 1.0), Setting("seed", "integer", 0)),
        series=(Series("random_drop", "random drop", "#999999", "x"),),
        kept_fraction=budget_fraction,
    ),
    Method(
        id="downsample", plugin=f"{PLUGINS}.DownsampleLlava",
        settings=(Setting("mode", "string", REQUIRED), Setting("scale", "number"), Setting("budget", "number")),
        series=(Series("downsample", "downsample (lower resolution)", "#8C6D31", "P"),),
        kept_fraction=downsample_fraction,
    ),
    Method(
        id="hired", plugin=f"{PLUGINS}.HiredLlava",
        settings=(Setting("budget", "number", REQUIRED), Setting("alpha", "number", 0.5),
                  Setting("mode", "string", "paper"), Setting("score", "string"), Setting("newlines", "string"),
                  Setting("selection_layer", "integer"), Setting("distribution_layer", "integer", 0),
                  Setting("head", "integer")),
        series=(Series("hired_paper", "HiRED (paper)", "#E69F00", "o"),
                Series("hired_code", "HiRED (official code)", "#D55E00", "s")),
        series_of=hired_series, kept_fraction=budget_fraction,
        overhead="visor_model.methods.hired.HiREDSettings.overhead_flops",
    ),
    Method(
        id="visionzip", plugin=f"{PLUGINS}.VisionZipLlava",
        settings=(Setting("budget", "number", REQUIRED), Setting("dominant_ratio", "number"),
                  Setting("score", "string"), Setting("merge", "string", "official")),
        series=(Series("visionzip", "VisionZip", "#CC79A7", "X"),
                Series("visionzip_mean", "VisionZip (mean merge)", "#E7B8D6", "h")),
        series_of=visionzip_series, kept_fraction=budget_fraction,
        overhead="visor_model.methods.visionzip.VisionZipSettings.overhead_flops",
    ),
    Method(
        id="prumerge", plugin=f"{PLUGINS}.PruMergeLlava",
        settings=(Setting("mode", "string", "budget"), Setting("budget", "number", REQUIRED),
                  Setting("variant", "string", "plus"), Setting("score", "string"), Setting("layer", "integer"),
                  Setting("neighbours", "integer", 32), Setting("merge", "string", "official")),
        series=(Series("prumerge_plus", "PruMerge+", "#44AA99", "<"),
                Series("prumerge", "PruMerge", "#117733", ">")),
        series_of=prumerge_series, kept_fraction=budget_fraction,
        overhead="visor_model.methods.prumerge.PruMergeSettings.overhead_flops",
    ),
    Method(
        id="fastv", plugin="lmms_plugins.fastv.FastVLlava",
        settings=(Setting("k", "integer", REQUIRED), Setting("ratio", "number", REQUIRED),
                  Setting("score", "string", "last")),
        series=(Series("fastv", "FastV", "#882255", "p"),),
        kept_fraction=token_budget_fraction,
        overhead="visor_model.methods.fastv.FastVConfig.overhead_flops",
    ),
    Method(
        id="visor", plugin="lmms_plugins.visor.VisorLlava",
        settings=(Setting("sa_layers", "integer"), Setting("threshold", "number"), Setting("token_budget", "number"),
                  Setting("training", "string", "full", column=False)),  # summary.csv: visor_training
        series=(Series("visor_fixed", "VISOR (fixed configuration)", "#56B4E9", "D"),
                Series("visor_policy", "VISOR (policy)", "#0072B2", "^"),
                Series("visor_tr", "VISOR-TR (VISOR + token reduction)", "#009E73", "v")),
        series_of=visor_series, kept_fraction=token_budget_fraction,
        overhead="visor_model.methods.visor.config.VisorCost.overhead_flops",
    ),
)

# summary.csv's setting columns as first laid out (visor_model.audit.tables); a setting added since follows them,
# in record order (`setting_columns`)
SUMMARY_ORDER = ("budget", "alpha", "mode", "score", "newlines", "threshold", "sa_layers", "token_budget", "seed",
                 "k", "ratio", "dominant_ratio", "scale", "merge")


# ----------------------------------------------------------------------------------------------------------
# lookups


def method_ids(methods: tuple[Method, ...] | None = None) -> tuple[str, ...]:
    return tuple(m.id for m in (METHODS if methods is None else methods))


def method(method_id: str, methods: tuple[Method, ...] | None = None) -> Method:
    """The record of `method_id` (ValueError naming the registry when there is none)."""
    for record in METHODS if methods is None else methods:
        if record.id == method_id:
            return record
    raise ValueError(f"no method {method_id!r} in visor_model.methods.registry.METHODS (known: "
                     f"{', '.join(method_ids(methods))}); a new method needs its record there")


def all_series(methods: tuple[Method, ...] | None = None) -> tuple[Series, ...]:
    """Every series, in the report's order (the records' order)."""
    return tuple(s for m in (METHODS if methods is None else methods) for s in m.series)


def setting_columns(methods: tuple[Method, ...] | None = None) -> tuple[str, ...]:
    """The summary's setting columns: every records' settings (but those with column=False), in SUMMARY_ORDER, then
    the others in record order."""
    names = list(dict.fromkeys(s.name for m in (METHODS if methods is None else methods) for s in m.settings
                               if s.column))
    return tuple([c for c in SUMMARY_ORDER if c in names] + [n for n in names if n not in SUMMARY_ORDER])


def setting_types(methods: tuple[Method, ...] | None = None) -> dict[str, str]:
    """{setting key: JSON type} over every record (ValueError when two records give one key two types)."""
    types: dict[str, tuple[str, str]] = {}
    for record in METHODS if methods is None else methods:
        for setting in record.settings:
            seen = types.setdefault(setting.name, (setting.type, record.id))
            if seen[0] != setting.type:
                raise ValueError(f"setting {setting.name!r} has type {seen[0]} for {seen[1]} but {setting.type} for "
                                 f"{record.id}: one key, one type (the config schema has one definition)")
    return {name: type_ for name, (type_, _) in types.items()}


def schema_disagreements(schema: Mapping, methods: tuple[Method, ...] | None = None) -> list[str]:
    """Where workflow/schemas/config.schema.yaml (as a dict) and the registry disagree: the `methods` enum against
    the ids, `$defs.setting`'s keys and types and the sweep grid's keys against the records' settings. Empty: they
    agree."""
    ids = method_ids(methods)
    problems = []
    enum = schema["properties"]["methods"]["propertyNames"]["enum"]
    for missing in [i for i in ids if i not in enum]:
        problems.append(f"method {missing!r} has a registry record but is not in the schema's methods enum "
                        "(properties.methods.propertyNames.enum)")
    for extra in [i for i in enum if i not in ids]:
        problems.append(f"the schema's methods enum names {extra!r}, which has no record in "
                        "visor_model.methods.registry.METHODS")
    properties = schema["$defs"]["setting"]["properties"]
    grid = schema["properties"]["methods"]["additionalProperties"]["items"]["properties"]["grid"]["properties"]
    types = setting_types(methods)
    for name, type_ in types.items():
        if name not in properties:
            problems.append(f"setting {name!r} (a registry record's) is not in the schema's $defs.setting")
            continue
        declared = properties[name].get("type", "string" if "enum" in properties[name] else None)
        if declared != type_:
            problems.append(f"setting {name!r} has type {type_} in the registry but {declared} in the schema's "
                            "$defs.setting")
        if name not in grid:
            problems.append(f"setting {name!r} is not a key of the schema's sweep grid (methods.*.grid)")
    for extra in [n for n in list(properties) + list(grid) if n not in types]:
        problems.append(f"the schema's setting {extra!r} is no registry record's setting")
    return list(dict.fromkeys(problems))
