"""VISOR's training as evidence: the training table written from a checkpoint's record, the convergence test and
the quality gate (visor_model.audit.tables.visor_training_table, visor_model.audit.training)."""

from __future__ import annotations

import pandas as pd
import pytest

from visor_model.audit.tables import TRAINING_COLUMNS, visor_training_table
from visor_model.audit.training import convergence, convergence_sentence, quality_gate


def record(final_largest: float = 0.9, host: float = 0.92, moving: bool = False) -> dict:
    """The training record of a 2-configuration VISOR trained 4 + 4 steps, validated at steps 2, 4, 6, 8."""
    steps = [2, 4, 6, 8]
    largest = [0.5, 0.8, 0.85, final_largest] if moving else [0.5, 0.8, final_largest, final_largest]
    validation = [{"step": s, "stage": 1 if s <= 4 else 2, "configuration": c, "benchmark": b, "accuracy": a, "n": 10}
                  for s, big in zip(steps, largest) for c, a in (("sa0", big - 0.2), ("sa2", big))
                  for b in ("synth_shape", "synth_marker")]
    return {"universal": {"order": "paper", "batch_size": 16},
            "history": {"loss": [[s, 1 if s <= 4 else 2, 1.0 / s] for s in range(1, 9)], "validation": validation},
            "host_validation": {"curve": {"synth_shape": host, "synth_marker": host},
                                "viable": {"synth_shape": host, "synth_marker": host}},
            "viable_split": {"split": "val", "rows_per_task": [0, 20]},
            "configurations": [{"sa_layers": 0, "task_accuracy": {"synth_shape": 0.6, "synth_marker": 0.7}},
                               {"sa_layers": 2, "task_accuracy": {"synth_shape": 0.9, "synth_marker": 0.8}}]}


def test_training_table_has_the_loss_curves_and_the_host():
    table = visor_training_table([("reference_ov", "full", record())])
    assert tuple(table.columns) == TRAINING_COLUMNS
    loss = table[table["metric"] == "loss"]
    assert loss["step"].tolist() == list(range(1, 9)) and loss["stage"].tolist() == [1] * 4 + [2] * 4
    curve = table[table["metric"] == "val_accuracy"]
    assert set(curve["configuration"]) == {"sa0", "sa2", "host"}
    assert curve[curve["configuration"] == "host"]["step"].tolist() == [0, 0]
    final = table[table["metric"] == "final_val_accuracy"]
    assert sorted(final["configuration"].unique()) == ["host", "sa0", "sa2"] and set(final["n"]) == {20}
    assert set(table["order"]) == {"paper"} and set(table["batch_size"]) == {16}


def test_convergence_reads_the_last_quarter_of_training():
    steady = convergence(visor_training_table([("m", "full", record())]))
    assert steady["converged"].all() and steady["from_step"].tolist() == [6, 6]
    assert "converged by the test" in convergence_sentence(steady)
    moving = convergence(visor_training_table([("m", "full", record(moving=True))]))
    largest = moving[moving["configuration"] == "sa2"].iloc[0]
    assert not largest["converged"] and largest["moved"] == pytest.approx(5.0)
    assert "did not converge" in convergence_sentence(moving)


def test_quality_gate_fails_an_under_trained_visor():
    passed = quality_gate(visor_training_table([("m", "full", record(final_largest=0.9, host=0.92))]), 3.0)
    assert passed["passed"].tolist() == [True] and passed["gap"].iloc[0] == pytest.approx(2.0)
    failed = quality_gate(visor_training_table([("m", "half", record(final_largest=0.8, host=0.92))]), 3.0)
    assert failed["passed"].tolist() == [False] and failed["largest"].tolist() == ["sa2"]
    assert failed["gap"].iloc[0] == pytest.approx(12.0)
    assert quality_gate(pd.DataFrame(), 3.0).empty
    with pytest.raises(ValueError, match="has no column"):
        quality_gate(pd.DataFrame({"model": ["m"]}), 3.0)
