"""The shipped reference models reach the accuracy targets, and the suite discriminates token dropping:
random dropping to 20% costs the fine-grained task >= 20 points and the coarse task <= 5 points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visor_model.benchmarks import generate_split
from visor_model.checkpoints import load_checkpoint
from visor_model.train_reference import discrimination
from visor_model.training import Example

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
TEST_SIZE = 300  # the default config's test split


@pytest.fixture(scope="module")
def test_examples():
    return {
        task: [Example(task, row["image"], row["question"], row["answer"])
               for row in generate_split(task, "test", TEST_SIZE, seed=0)]
        for task in ("synth_background", "synth_marker")
    }


@pytest.mark.parametrize("name", ["reference_ov", "reference_next"])
def test_reference_model_targets_and_discrimination(name, test_examples):
    torch.set_num_threads(2)
    figures = discrimination(load_checkpoint(str(CHECKPOINTS / name)), test_examples, budget=0.2, seed=0)
    print(name, figures)
    coarse, fine = figures["synth_background"], figures["synth_marker"]
    assert coarse["full"] >= 0.90
    assert fine["full"] >= 0.60
    assert fine["loss_points"] >= 20
    assert coarse["loss_points"] <= 5
