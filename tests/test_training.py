"""Reference training: seeded, and an interrupted run resumes to exactly the uninterrupted state."""

from __future__ import annotations

from dataclasses import replace

import pytest
from safetensors.torch import load_file

from conftest import tiny_config
from visor_model.reference import recipe as training_module
from visor_model.reference.recipe import train_reference
from visor_model.training import ProgressLog, TrainConfig

CONFIG = TrainConfig(steps=4, batch_size=2, save_every=2, log_every=1, warmup_steps=1)


def run(task_dir, out, state, config=CONFIG):
    return train_reference("llava_onevision", [task_dir], out, state, tiny_config("llava_onevision"), config,
                           val_per_task=2)


def test_interrupted_training_resumes_to_the_same_weights(task_dir, tmp_path, monkeypatch, capsys):
    run(task_dir, tmp_path / "straight", tmp_path / "state_straight")
    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))

    original_update = ProgressLog.update

    def interrupt_at_step_three(self, step, loss, lr):
        if step == 2:
            raise KeyboardInterrupt("simulated kill")
        original_update(self, step, loss, lr)

    monkeypatch.setattr(training_module.ProgressLog, "update", interrupt_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        run(task_dir, tmp_path / "resumed", tmp_path / "state_resumed")
    assert not (tmp_path / "resumed").exists()  # nothing half-written where downstream jobs look
    monkeypatch.setattr(training_module.ProgressLog, "update", original_update)
    capsys.readouterr()
    record = run(task_dir, tmp_path / "resumed", tmp_path / "state_resumed")
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert "resuming reference training from step 2" in capsys.readouterr().out
    assert record["train_config"]["steps"] == 4
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert (straight[name] == resumed[name]).all(), name


def test_a_state_saved_with_another_recipe_is_discarded_not_resumed(task_dir, tmp_path, capsys):
    state = tmp_path / "state"
    run(task_dir, tmp_path / "first", state, replace(CONFIG, steps=3, save_every=1))  # leaves the state of step 2
    assert (state / "state.json").is_file()
    capsys.readouterr()
    run(task_dir, tmp_path / "second", state)
    out = capsys.readouterr().out
    assert f"discarding the training state in {state}: it was made with another configuration" in out
    assert "resuming" not in out
