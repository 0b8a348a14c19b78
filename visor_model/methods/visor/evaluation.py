"""VISOR's configurations evaluated on validation rows (`run_configuration`, `evaluate_family`): accuracy per
task and mean LLM-prefill FLOPs, the viable configurations on their accuracy-FLOP Pareto frontier
(`viable_configurations`), and the host's accuracy beside them (`host_accuracy`)."""

from __future__ import annotations

from visor_model.efficiency.accounting import visor_prefill_flops
from visor_model.efficiency.shapes import LLMShape
from visor_model.examples import Example, answer_examples, exact_match
from visor_model.llava.runner import VisionLanguageRunner
from visor_model.methods.base import FullTokens
from visor_model.methods.visor.modeling import (
    VisorModel,
)
from visor_model.methods.visor.runner import VisorRunner, VisorSampleRecord
from visor_model.stats import pareto_mask


def run_configuration(loaded, model: VisorModel, examples: list[Example], active, batch_size: int = 32,
                      reducer=None) -> list[VisorSampleRecord]:
    runner = VisorRunner(loaded, model, reducer, device=str(loaded.model.device), active=active)
    return answer_examples(runner, examples, batch_size)


def mean_prefill_flops(model: VisorModel, records: list[VisorSampleRecord], active) -> float:
    shape = LLMShape.from_config(model.text_config)
    return sum(visor_prefill_flops(shape, model.config, active, r.llm_visual_tokens, r.llm_text_tokens).total
               for r in records) / max(1, len(records))


def pareto_frontier(points: list[dict]) -> list[dict]:
    """The points (dicts with 'flops', 'accuracy') on their accuracy-FLOP Pareto frontier (`pareto_mask`: ties
    and duplicates all kept), cheapest first, equal FLOPs in their given order; the dicts themselves, not copies."""
    on_frontier = pareto_mask([p["flops"] for p in points], [p["accuracy"] for p in points])
    return sorted((p for p, keep in zip(points, on_frontier) if keep), key=lambda p: p["flops"])


def task_accuracies(records, examples: list[Example]) -> dict[str, float]:
    """Greedy exact-match accuracy per task of `records` (answers to `examples`, in order)."""
    scores: dict[str, list[float]] = {}
    for record, example in zip(records, examples):
        scores.setdefault(example.task, []).append(exact_match(record.answer, example.answer))
    return {task: sum(values) / len(values) for task, values in scores.items()}


def evaluate_family(loaded, model: VisorModel, examples: list[Example], batch_size: int = 32) -> list[dict]:
    """Every family member on `examples`: accuracy (overall and per task) and mean LLM-prefill FLOPs."""
    evaluated = []
    for active in model.config.family():
        records = run_configuration(loaded, model, examples, active, batch_size)
        accuracy = sum(exact_match(r.answer, e.answer) for r, e in zip(records, examples)) / len(examples)
        evaluated.append({"configuration": list(active), "sa_layers": len(active), "accuracy": accuracy,
                          "task_accuracy": task_accuracies(records, examples),
                          "flops": mean_prefill_flops(model, records, active)})
        print(f"configuration {active}: accuracy {accuracy:.3f}, prefill FLOPs {evaluated[-1]['flops']:.3e}",
              flush=True)
    return evaluated


def viable_configurations(loaded, model: VisorModel, examples: list[Example], batch_size: int = 32,
                          keep_largest: bool = True) -> dict:
    """Family members on the accuracy-FLOP Pareto frontier of `examples`, cheapest first; with
    `keep_largest` the largest family member is always kept (it anchors the labels and the fallback)."""
    evaluated = evaluate_family(loaded, model, examples, batch_size)
    frontier = pareto_frontier(evaluated)
    if keep_largest and frontier[-1] is not evaluated[-1]:
        frontier.append(evaluated[-1])  # anchors the policy labels and is its fallback
    return {"evaluated": evaluated, "viable": [tuple(p["configuration"]) for p in frontier]}


def host_accuracy(loaded, examples: list[Example], batch_size: int = 32) -> dict[str, float]:
    """The host model's (full compute) accuracy per task on `examples`."""
    runner = VisionLanguageRunner(loaded, FullTokens(), str(loaded.model.device))
    return task_accuracies(answer_examples(runner, examples, batch_size), examples)

