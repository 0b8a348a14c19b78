"""Entry points of the `lmms_eval.models` group, made from the method registry (`visor_model.methods.registry`):
`lmms_plugins.manifests:<id>` is the manifest of method <id> (its record's plugin class). pyproject.toml lists one
entry point per registry id (entry points are static; tests/test_registry.py checks they match).

Import-light on purpose: lmms-eval loads every manifest at start-up, and one that fails to import silently disables
the ones after it. The registry imports the standard library only.
"""

from lmms_eval.models.registry_v2 import ModelManifest

from visor_model.methods import registry


def manifest(method_id: str) -> ModelManifest:
    """The lmms-eval manifest of a registered method: its id and plugin class."""
    record = registry.method(method_id)
    return ModelManifest(model_id=record.id, simple_class_path=record.plugin)


def __getattr__(name: str) -> ModelManifest:
    """`lmms_plugins.manifests:<id>` (an entry point's attribute) for every registered method id."""
    if name in registry.method_ids():
        return manifest(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
