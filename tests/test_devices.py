"""The one place that says what the device "auto" means (visor_model.devices.resolve_device)."""

from __future__ import annotations

import sys
import types

from visor_model.devices import resolve_device


def test_a_named_device_is_kept_and_auto_follows_the_gpu():
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    for auto in ("auto", None, ""):
        assert resolve_device(auto, cuda_available=True) == "cuda"
        assert resolve_device(auto, cuda_available=False) == "cpu"


def test_auto_asks_torch_only_when_the_caller_does_not_know(monkeypatch):
    for available, expected in ((True, "cuda"), (False, "cpu")):
        fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda available=available: available))
        monkeypatch.setitem(sys.modules, "torch", fake)
        assert resolve_device("auto") == expected
    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch now fails: a known answer must not need it
    assert resolve_device("auto", cuda_available=False) == "cpu" and resolve_device("cpu") == "cpu"
