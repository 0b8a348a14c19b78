"""The plugins of one model's latency settings, built in one process as `evaluate` builds them, each checkpoint
loaded once.

    plugins = SharedPlugins([("llava_full", model_args(path, {}, evaluation)),
                             ("hired", model_args(path, {"budget": 0.2}, evaluation)), ...])
    plugins.check()  # after measuring: no plugin changed the model it shares

Every plugin is lmms-eval's registered class for its method (`lmms_eval.models.get_model`) called with the same
model args as `evaluate` (`lmms_plugins.args.model_args`), so the timed runner, reducer, VISOR configuration or
policy are the evaluated ones. One difference: plugins whose `load_model` is the same function, called with the
same checkpoint, revision, device and dtype, share what it loaded (the base model for llava_full, random_drop and
hired; VISOR's checkpoint for every VISOR setting). Without that, one model's settings side by side would hold
a copy of its weights each (LLaVA-NeXT-7B's 11 settings in bfloat16: about 150 GB). Sharing is sound only while
no plugin changes the model it was given (hooks, patched forwards, replaced weights, another attention
implementation): `check` compares each plugin's model with a fingerprint taken when the plugin was built, and
names the plugin and method whose model changed (a method that must change its model overrides `load_model`, so
that it loads its own).
"""

from __future__ import annotations

import itertools

# transformers installs its output-capturing hooks (hidden states, attentions) on a model's first forward pass,
# whatever the method; they stay inactive unless outputs are being recorded. They are no change by a method.
TRANSFORMERS_HOOKS = "transformers.utils.output_capturing"


def _hooks(hooks: dict) -> list[str]:
    return [getattr(hook, "__qualname__", repr(hook)) for hook in hooks.values()
            if getattr(hook, "__module__", None) != TRANSFORMERS_HOOKS]


def fingerprint(plugin) -> tuple:
    """What sharing must not change in a plugin's model (and VISOR's modules): every module's type, hooks (but
    transformers' own output-capturing ones) and instance-level forward, every tensor's storage, shape and dtype,
    the attention implementation."""
    import torch

    runner = plugin.runner
    modules = [runner.model] + [m for m in (getattr(runner, "visor", None),) if isinstance(m, torch.nn.Module)]
    parts = []
    for module in modules:
        parts.append(getattr(getattr(module, "config", None), "_attn_implementation", None))
        for name, sub in module.named_modules():
            parts.append((name, type(sub).__qualname__, _hooks(sub._forward_hooks), _hooks(sub._forward_pre_hooks),
                          "forward" in vars(sub)))
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
            parts.append((name, tensor.data_ptr(), tuple(tensor.shape), str(tensor.dtype)))
    return tuple(parts)


def sharing(cls, loads: dict):
    """A subclass of plugin class `cls` whose `load_model` reuses what an earlier call of the same loader with
    the same arguments set on its plugin (`loads` holds it: {key: attributes})."""
    own_load = cls.load_model

    def load_model(self, pretrained, revision, dtype, **method_args):
        key = (own_load, pretrained, revision, self.device_name, dtype)
        if key not in loads:
            before = set(vars(self))
            own_load(self, pretrained, revision, dtype, **method_args)
            loads[key] = {name: value for name, value in vars(self).items() if name not in before}
        vars(self).update(loads[key])

    return type(cls.__name__, (cls,), {"load_model": load_model, "__module__": cls.__module__, "__doc__": cls.__doc__})


class SharedPlugins:
    """The plugins of `runs` ([(method, model args)]), in order, sharing loaded checkpoints (module docstring)."""

    def __init__(self, runs: list[tuple[str, dict]]):
        from lmms_eval.models import get_model

        loads: dict = {}
        self.methods, self.plugins, self.fingerprints = [], [], []
        for method, args in runs:
            plugin = sharing(get_model(method), loads)(**args)
            self.methods.append(method)
            self.plugins.append(plugin)
            self.fingerprints.append(fingerprint(plugin))  # as built, before a later plugin could change it
        self.check()

    def check(self) -> None:
        """Raise if the model of a plugin is no longer what it was when the plugin was built."""
        for method, plugin, before in zip(self.methods, self.plugins, self.fingerprints):
            if fingerprint(plugin) != before:
                raise RuntimeError(f"the model of {method} ({plugin.label}) changed after it was built; it shares "
                                   "that model with the other settings of the latency run, so a method that modifies "
                                   "its model must load its own (override load_model in its plugin)")
