"""Entry points of the `lmms_eval.models` group, made from the method registry (`visor_model.methods.registry`):
`lmms_plugins.manifests:<id>` is the manifest of method <id> (its record's plugin class). pyproject.toml lists one
entry point per registry id (entry points are static; tests/test_registry.py checks they match).

Import-light on purpose: lmms-eval loads every manifest at start-up, and one that fails to import silently disables
the ones after it. The registry imports the standard library only.
"""

from visor_model.methods import registry


def manifest(method_id: str):
    """The lmms-eval manifest (`ModelManifest`) of a registered method: its id and plugin class.

    lmms-eval is imported here, not at the top: importing it builds its model registry, which loads these entry
    points; this module must already be able to answer them when that happens (importing it first is a cycle)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    record = registry.method(method_id)
    return ModelManifest(model_id=record.id, simple_class_path=record.plugin)


def __getattr__(name: str):
    """`lmms_plugins.manifests:<id>` (an entry point's attribute) for every registered method id."""
    if name in registry.method_ids():
        return manifest(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
