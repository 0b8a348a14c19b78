"""The primary metric of a benchmark: which lmms-eval metric it is, how to read one sample's score from the
per-sample log, and the scale of lmms-eval's aggregate.

Each benchmark of the config names one lmms-eval metric (`benchmarks.<name>.metric`, default `exact_match`).
lmms-eval logs, per sample, whatever the task's `process_results` returns under that metric's name: a number
(`exact_match`, `anls`, `relaxed_overall`) or a dict that the task's aggregation reads (OCRBench, POPE, MME
carry the sample's 0/1 correctness as `score`; MMBench carries the answer, scored only in aggregation).
`sample_score` turns it into one number in [0, 1], so that per-sample means, bootstrap CIs and paired
differences work the same on every benchmark. `task_value` reads lmms-eval's own aggregate from the results
JSON and puts it on the scale the task is reported in (ANLS and accuracies in points, OCRBench 0-1000, MME
perception 0-2000): for some tasks that aggregate is not a mean of the per-sample scores (`mean` below).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


def _number(value) -> float:
    return float(value)


def _dict_score(value) -> float:
    """OCRBench, POPE, MME: the dict's `score` is the sample's correctness (0 or 1)."""
    return float(value["score"])


def _mmbench_score(value) -> float:
    """MMBench logs the answer, not its correctness: score it with lmms-eval's own static (no-judge) extraction,
    as `mmbench_aggregate_dev_results_static` does, on this sample alone (no circular variants)."""
    import pandas as pd
    from lmms_eval.tasks.mmbench.mmbench_evals import MMBench_Evaluator

    row = pd.DataFrame([value])
    return float(MMBench_Evaluator().eval_sub_data(row, {value["index"]: value["answer"]}, static_only=True))


@dataclass(frozen=True)
class Metric:
    """An lmms-eval metric as a benchmark's primary metric.

    name: the metric's key in the per-sample log and (as `<name>,<filter>`) in the results JSON
    scale: the scale the task is reported on, in words
    factor: lmms-eval's aggregate x factor = the value on that scale
    mean: the metric is factor x the mean of the per-sample scores, so factor x a bootstrap CI of that mean is
        a CI of the metric; False for corpus-level or grouped scores (F1, MME's per-category sums, MMBench's
        circular evaluation)
    read: one sample's logged value -> its score in [0, 1]
    """
    name: str
    scale: str
    factor: float
    mean: bool
    read: Callable[[object], float] = _number


METRICS = {metric.name: metric for metric in (
    Metric("exact_match", "0-100", 100, True),  # the synthetic tasks, textvqa_val (VQA accuracy), gqa, ...
    Metric("anls", "0-100", 100, True),  # docvqa_val, infovqa_val
    Metric("relaxed_overall", "0-100", 100, True),  # chartqa: relaxed accuracy (5% numeric tolerance)
    # OCRBench: the number of correct answers of its 1000 (lmms-eval reports that count / 1000; it divides by
    # 1000 whatever the number of documents, so under evaluation.limit only the per-sample mean is comparable)
    Metric("ocrbench_accuracy", "0-1000", 1000, True, _dict_score),
    Metric("pope_accuracy", "0-100", 100, True, _dict_score),
    Metric("pope_f1_score", "0-100", 100, False, _dict_score),  # corpus-level F1; per sample: correctness
    # MME: sum over its 10 perception (4 cognition) categories of accuracy + accuracy+ (both question of an
    # image right), in points; a sample of the other kind has no score
    Metric("mme_perception_score", "0-2000", 1, False, _dict_score),
    Metric("mme_cognition_score", "0-800", 1, False, _dict_score),
    Metric("gpt_eval_score", "0-100", 1, False, _mmbench_score),  # mmbench_en_dev_static: already in points
)}


def metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown primary metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


def sample_score(name: str, sample: dict) -> float | None:
    """One logged sample's score in [0, 1] under metric `name`; None where the sample has none (an MME
    cognition question under the perception score)."""
    if name not in sample:
        return None
    return metric(name).read(sample[name])


def task_value(name: str, task_results: dict) -> float:
    """lmms-eval's aggregate of metric `name` from a task's entry of the results JSON (`<name>,<filter>`),
    on the task's scale; NaN where lmms-eval reported none."""
    values = [value for key, value in task_results.items() if key.split(",")[0] == name and "," in key]
    if not values or not isinstance(values[0], (int, float)) or isinstance(values[0], bool):
        return float("nan")
    value = float(values[0])
    return metric(name).factor * value if math.isfinite(value) else float("nan")


def primary_metric(name: str, task_results: dict) -> dict:
    """The evaluation record's `primary_metric`: name, lmms-eval's aggregate on the task's scale (`value`),
    the scale, the factor from the per-sample mean's scale and whether the metric is that mean."""
    spec = metric(name)
    return {"name": name, "value": task_value(name, task_results), "scale": spec.scale, "factor": spec.factor,
            "mean": spec.mean}
