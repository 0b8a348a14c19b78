"""Run lmms-eval evaluations with lmms-eval's own evaluator and refuse results that are not trustworthy.

`run_lmms_eval_tasks` does in this process what `python -m lmms_eval --log_samples ...` does for each of its
tasks (the plugins work from that CLI as well): `lmms_eval.evaluator.simple_evaluate` on one task, then
lmms-eval's `EvaluationTracker` writes the results JSON and the per-sample log into the task's own output folder.
The model is loaded once and lmms-eval imported once for all the tasks, which are evaluated one after another
(each call seeds as the CLI does and hands only its task's requests to the model, so each task's outputs are
those of a run on it alone). In process, a local task folder is indexed alone, not with lmms-eval's hundreds of
built-in task YAMLs (the CLI indexes them on every start: seconds per evaluation), once per folder, and an
exception reaches the caller instead of being logged and swallowed (the CLI exits 0 when an evaluation fails).
What was written is then checked anyway, task by task: a results file for the task, the expected number of
samples, and a share of empty answers without a reported generation below a threshold (lmms-eval's wrappers turn
generation errors into empty answers; the plugins log a `skipped_reason` for a document they cannot answer).
Any failure raises `EvaluationFailed` with a message that names the problem, the task, the documents and the log
to read. `run_lmms_eval` is the same for one task.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from argparse import Namespace
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from lmms_plugins.args import model_args_string
from lmms_plugins.metrics import sample_score


class EvaluationFailed(RuntimeError):
    """An lmms-eval run that failed, loudly or silently."""


@dataclass
class EvaluationOutput:
    results: dict  # lmms-eval's results JSON
    samples: list[dict]  # lmms-eval's per-sample log for the task
    results_path: Path
    samples_path: Path


@dataclass(frozen=True)
class TaskRun:
    """One task of an evaluation: its lmms-eval name, the folder its outputs go to (the CLI's --output_path), the
    task folder it is defined in (the CLI's --include_path; None: lmms-eval's built-in tasks) and the number of
    samples it must log (None: not checked)."""

    task: str
    output_dir: Path
    include_path: Path | None = None
    expected_samples: int | None = None


def run_lmms_eval(
    model: str,
    model_args: dict,
    task: str,
    output_dir: Path,
    log_path: Path,
    include_path: Path | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    expected_samples: int | None = None,
    max_empty_fraction: float = 0.05,
    offline: bool = True,
    seed: int = 0,
) -> EvaluationOutput:
    """Evaluate lmms-eval model id `model` with `model_args` on `task` (from `include_path`, or lmms-eval's
    built-in tasks when None), log to `log_path`, write lmms-eval's outputs under `output_dir`, check them."""
    [output] = run_lmms_eval_tasks(model, model_args, [TaskRun(task, Path(output_dir), include_path, expected_samples)],
                                   log_path, batch_size, limit, max_empty_fraction, offline, seed)
    return output


def run_lmms_eval_tasks(
    model: str,
    model_args: dict,
    tasks: list[TaskRun],
    log_path: Path,
    batch_size: int = 1,
    limit: int | None = None,
    max_empty_fraction: float = 0.05,
    offline: bool = True,
    seed: int = 0,
) -> list[EvaluationOutput]:
    """Evaluate lmms-eval model id `model` with `model_args` on each of `tasks` in turn, loaded once; log to
    `log_path`; write each task's lmms-eval outputs to its output_dir and check them before the next task starts
    (`limit`, `max_empty_fraction`: every task's). The outputs, in the order of `tasks`."""
    if offline:  # before lmms-eval imports `datasets`, which reads them once
        os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    import lmms_eval.evaluator  # noqa: F401  (importing lmms_eval.models resets loguru's handlers)
    from loguru import logger

    log_path, outputs = Path(log_path), []
    with open(log_path, "a") as log, redirect_stdout(log), redirect_stderr(log):
        logger.remove()  # lmms-eval logs through loguru; like its CLI, send that log to one place: this file
        logger.add(log, level="INFO", colorize=False)
        running = ", ".join(run.task for run in tasks)  # what a failure names: its task (while loading: them all)
        try:
            managers = task_managers(model, tasks)
            lm = load_model(model, model_args, batch_size)
            for run in tasks:
                running = run.task
                print(f"lmms-eval evaluator: --model {model} --model_args {model_args_string(model_args)} "
                      f"--tasks {run.task} --batch_size {batch_size} --output_path {run.output_dir} --log_samples "
                      f"--seed {seed}" + (f" --include_path {run.include_path}" if run.include_path is not None else "")
                      + (f" --limit {limit}" if limit is not None else ""), flush=True)
                evaluate(lm, model, model_args, run, managers[run.include_path], batch_size, limit, seed)
                log.flush()  # check_outputs appends to the log too
                outputs.append(check_outputs(run.output_dir, run.task, log_path, run.expected_samples,
                                             max_empty_fraction))
        except EvaluationFailed:
            raise
        except Exception as error:
            traceback.print_exc()
            raise EvaluationFailed(f"lmms-eval failed for {model} on {running}: {type(error).__name__}: {error}; "
                                   f"see {log_path}") from error
        finally:
            logger.remove()
            logger.add(sys.stderr, level="WARNING")  # as after importing lmms_eval.models, on stderr
    return outputs


def task_managers(model: str, tasks: list[TaskRun]) -> dict:
    """lmms-eval's TaskManager of each task folder of `tasks` (None: the built-in tasks), each folder indexed alone
    (two folders may define tasks of the same name; lmms-eval's index prefers a built-in task to a folder's of the
    same name), after checking that every task is in its folder's index."""
    from lmms_eval.tasks import TaskManager

    managers = {}
    for run in tasks:
        if run.include_path not in managers:
            managers[run.include_path] = TaskManager(
                "INFO", include_path=None if run.include_path is None else str(run.include_path),
                include_defaults=run.include_path is None, model_name=model)
        if not managers[run.include_path].match_tasks([run.task]):
            where = f"in {run.include_path}" if run.include_path is not None else "among lmms-eval's tasks"
            raise EvaluationFailed(f"unknown lmms-eval task {run.task!r}: no task of that name {where}")
    return managers


def load_model(model: str, model_args: dict, batch_size: int):
    """The lmms-eval model `model` with `model_args`, built as simple_evaluate builds it from the CLI's arguments."""
    from lmms_eval.models import get_model

    return get_model(model).create_from_arg_string(
        model_args_string(model_args), {"batch_size": batch_size, "max_batch_size": None, "device": None})


def evaluate(lm, model: str, model_args: dict, run: TaskRun, task_manager, batch_size: int, limit: int | None,
             seed: int) -> None:
    """The evaluation part of lmms-eval's CLI (`cli_evaluate_single`) for one task, with `--log_samples`, on the
    loaded model `lm` (lmms-eval model id `model` with `model_args`)."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.utils import get_datetime_str

    tracker, datetime_str = EvaluationTracker(output_path=str(run.output_dir)), get_datetime_str()
    # The CLI's arguments that the evaluator and the tasks read: its default --process_with_media false (scoring
    # reads the documents without their images; without cli_args the evaluator decodes every image again, and one
    # corrupt image, which the plugin skips, kills it) and --output_path (where tasks such as textvqa_val write
    # their submission files).
    results = simple_evaluate(
        model=lm, model_args=model_args_string(model_args), tasks=[run.task], batch_size=batch_size, limit=limit,
        log_samples=True, evaluation_tracker=tracker, task_manager=task_manager, random_seed=seed,
        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed, datetime_str=datetime_str,
        cli_args=Namespace(process_with_media=False, output_path=str(run.output_dir)),
    )
    if results is None:  # only ranks other than 0 get None; this process is rank 0
        raise EvaluationFailed(f"lmms-eval returned no results for {model} on {run.task}")
    # simple_evaluate names a model given as an object by its class (results) and keeps the object itself (the
    # tracker, which would copy it into the results file): name it by its id, as for the CLI's --model
    results["config"]["model"] = tracker.general_config_tracker.model_source = model
    lm.task_dict.pop(run.task, None)  # the task's documents, which simple_evaluate handed the model: not kept
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples, datetime_str=datetime_str)
    tracker.save_results_samples(task_name=run.task, samples=samples[run.task])


def last_error(log_path: Path) -> str:
    """The last line of the log that reports an error (lmms-eval logs it and exits 0), or ''."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.strip() for line in lines if "Error" in line and not line.lstrip().startswith("File ")]
    return errors[-1][-500:] if errors else ""


def check_outputs(
    output_dir: Path, task: str, log_path: Path, expected_samples: int | None, max_empty_fraction: float
) -> EvaluationOutput:
    # the tracker's <model>/<timestamp>_results.json; tasks write their own files under submissions/ (MMBench: a
    # *_results.json too)
    results_files = sorted(path for path in output_dir.rglob("*_results.json")
                           if "submissions" not in path.relative_to(output_dir).parts)
    if not results_files:
        cause = last_error(log_path)
        raise EvaluationFailed(
            f"lmms-eval wrote no results file for {task} (it exits 0 on errors); "
            + (f"last error: {cause}; " if cause else "") + f"see {log_path}"
        )
    results_path = results_files[-1]
    results = json.loads(results_path.read_text())
    if task not in results.get("results", {}):
        raise EvaluationFailed(f"lmms-eval results {results_path} have no entry for task {task}; see {log_path}")
    samples_files = sorted(
        results_path.parent.glob(f"{results_path.name.removesuffix('_results.json')}_samples_{task}.jsonl"))
    if not samples_files:
        raise EvaluationFailed(f"lmms-eval wrote no per-sample log for {task} beside {results_path}")
    samples = [json.loads(line) for line in samples_files[0].read_text().splitlines() if line.strip()]
    if expected_samples is not None and len(samples) != expected_samples:
        raise EvaluationFailed(f"{task}: expected {expected_samples} samples, lmms-eval logged {len(samples)}")
    unanswered = [s for s in samples if not logged_answer(s).strip() and not model_reported_generation(s)]
    if unanswered:
        summary = f"{len(unanswered)} of {len(samples)} answers are empty"
        if len(unanswered) / len(samples) > max_empty_fraction:
            raise EvaluationFailed(
                f"{task}: {summary} (more than {max_empty_fraction:.0%}): {unanswered_documents(unanswered)}; "
                f"lmms-eval wrappers turn generation errors into empty answers, see {log_path}"
            )
        with open(log_path, "a") as log:
            print(f"{task}: {summary} (at most {max_empty_fraction:.0%}, accepted): "
                  f"{unanswered_documents(unanswered)}", file=log)
    return EvaluationOutput(results=results, samples=samples, results_path=results_path, samples_path=samples_files[0])


def unanswered_documents(samples: list[dict], shown: int = 20) -> str:
    """The doc ids of unanswered samples grouped by the plugin's `skipped_reason` ("no reason logged": an error
    that a wrapper swallowed), at most `shown` ids per reason."""
    by_reason: dict[str, list] = {}
    for sample in samples:
        counts = (sample.get("token_counts") or [None])[0] or {}
        by_reason.setdefault(counts.get("skipped_reason") or "no reason logged", []).append(sample["doc_id"])
    parts = []
    for reason, doc_ids in by_reason.items():
        more = f" and {len(doc_ids) - shown} more" if len(doc_ids) > shown else ""
        parts.append(f"doc {', '.join(str(d) for d in doc_ids[:shown])}{more} ({reason})")
    return "; ".join(parts)


def model_reported_generation(sample: dict) -> bool:
    """Whether the model reported a generation for the sample (its token counts). An empty answer with a
    reported generation is the model's own answer (it emitted end-of-sequence first), not a swallowed error."""
    counts = (sample.get("token_counts") or [None])[0]
    return bool(counts) and counts.get("output_tokens") is not None


def logged_answer(sample: dict) -> str:
    """The filtered answer of a per-sample log entry (lmms-eval logs a string, or a list for some filters)."""
    answer = sample.get("filtered_resps", "")
    if isinstance(answer, list):
        answer = answer[0] if answer else ""
    return str(answer)


def sample_rows(samples: list[dict], metric: str = "exact_match") -> list[dict]:
    """One flat row per sample: doc id, answer, target, `score` (the sample's score in [0, 1] under the
    benchmark's primary `metric`, None where it has none; lmms_plugins.metrics) and the plugin's per-sample
    accounting. Raises EvaluationFailed when no sample carries the metric (a task that logs other keys)."""
    rows = []
    for sample in samples:
        row = {
            "doc_id": sample["doc_id"],
            "answer": logged_answer(sample),
            "target": sample.get("target"),
            "score": sample_score(metric, sample),
        }
        counts = (sample.get("token_counts") or [None])[0] or {}
        row.update({key: value for key, value in counts.items() if not isinstance(value, (dict, list))})
        rows.append(row)
    if samples and all(row["score"] is None for row in rows):
        logged = sorted(key for key in samples[0] if key not in LOG_FIELDS)
        raise EvaluationFailed(f"no sample logged metric {metric!r} (the benchmark's `metric`); the task's "
                               f"per-sample metrics are: {', '.join(logged) or 'none'}")
    return rows


# the keys of lmms-eval's per-sample log entry that are not metrics (evaluator._process_document_results)
LOG_FIELDS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "token_counts", "doc_hash",
              "input_media"}
