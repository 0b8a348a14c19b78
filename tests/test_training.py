"""Reference training: seeded, and an interrupted run resumes to exactly the uninterrupted state."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import replace

import pytest
from conftest import tiny_config
from safetensors.torch import load_file

from visor_model import files
from visor_model.files import replace_folder_atomically
from visor_model.reference import recipe as training_module
from visor_model.reference.recipe import train_reference
from visor_model.train_loop import ProgressLog, TrainConfig

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


# ----------------------------------------------------------------------------------------------------------
# replace_folder_atomically: how training states and checkpoint folders are written


def write_files(names, content):
    def write(tmp):
        for name in names:
            (tmp / name).write_text(content)
            time.sleep(0.0005)  # widens the window in which a non-atomic swap would show a half-written folder
    return write


def test_a_replaced_folder_is_never_missing_nor_half_written(tmp_path):
    target, names = tmp_path / "out", ["a", "b", "c"]
    replace_folder_atomically(target, write_files(names, "0"))
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                seen.append((target / names[-1]).read_text())  # written last: there iff the folder is complete
            except FileNotFoundError:
                seen.append(None)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 60):
            replace_folder_atomically(target, write_files(names, str(i)))
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert len(seen) > 100 and len(set(seen)) > 10
    assert None not in seen
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the old folders and the temporary ones are gone
    assert (target / "a").read_text() == "59"


def test_a_failed_write_leaves_the_old_folder_and_no_temporary_one(tmp_path):
    target = tmp_path / "out"
    replace_folder_atomically(target, write_files(["a"], "old"))

    def fail(tmp):
        (tmp / "a").write_text("new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        replace_folder_atomically(target, fail)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(target)) == ["a"] and (target / "a").read_text() == "old"


def test_without_renameat2_the_folder_is_still_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = tmp_path / "nested" / "out"
    replace_folder_atomically(target, write_files(["a", "b"], "old"))
    replace_folder_atomically(target, write_files(["a"], "new"))
    assert sorted(os.listdir(target.parent)) == ["out"]
    assert sorted(os.listdir(target)) == ["a"] and (target / "a").read_text() == "new"


def test_a_model_with_tied_embeddings_saves_and_resumes_its_state(tmp_path):
    """Qwen2 checkpoints tie the LM head to the word embeddings; safetensors refuses shared tensors as they are."""
    import torch

    from visor_model.train_loop import load_train_state, save_train_state

    def tied_model():
        model = torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 11, bias=False))
        model[1].weight = model[0].weight
        return model

    model = tied_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.arange(5)).sum().backward()
    optimizer.step()
    save_train_state(tmp_path / "state", model, optimizer, step=1, extra={"note": "tied"})

    restored = tied_model()
    record = load_train_state(tmp_path / "state", restored, torch.optim.AdamW(restored.parameters(), lr=0.1))
    assert record == {"step": 1, "note": "tied"}
    assert torch.equal(restored[0].weight, model[0].weight) and restored[1].weight is restored[0].weight
