"""Run one lmms-eval evaluation through the stock CLI and refuse results that are not trustworthy.

lmms-eval's CLI exits 0 when an evaluation fails, and its wrappers turn generation errors into empty answers.
`run_lmms_eval` therefore checks what was written: a results file for the task, the expected number of
samples, a per-sample log, and a share of empty answers without a reported generation below a threshold. Any failure raises
`EvaluationFailed` with a message that names the problem and the log to read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class EvaluationFailed(RuntimeError):
    """An lmms-eval run that failed, loudly or silently."""


@dataclass
class EvaluationOutput:
    results: dict  # lmms-eval's results JSON
    samples: list[dict]  # lmms-eval's per-sample log for the task
    results_path: Path
    samples_path: Path


def model_args_string(args: dict) -> str:
    """lmms-eval's `k=v,k2=v2` form (its Python API does not accept a dict)."""
    for key, value in args.items():
        if any(c in str(value) for c in ",="):
            raise ValueError(f"model arg {key}={value!r} cannot contain ',' or '='")
    return ",".join(f"{key}={value}" for key, value in args.items() if value is not None)


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
    output_dir = Path(output_dir)
    command = [
        sys.executable, "-m", "lmms_eval",
        "--model", model,
        "--model_args", model_args_string(model_args),
        "--tasks", task,
        "--batch_size", str(batch_size),
        "--output_path", str(output_dir),
        "--log_samples",
        "--seed", f"{seed},{seed},{seed},{seed}",
    ]
    if include_path is not None:
        command += ["--include_path", str(include_path)]
    if limit is not None:
        command += ["--limit", str(limit)]
    env = dict(os.environ)
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if completed.returncode != 0:
        raise EvaluationFailed(f"lmms-eval exited with status {completed.returncode} for {model} on {task}; see {log_path}")
    return check_outputs(output_dir, task, log_path, expected_samples, max_empty_fraction)


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
    results_files = sorted(output_dir.rglob("*_results.json"))
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
    samples_files = sorted(results_path.parent.glob(f"{results_path.name.removesuffix('_results.json')}_samples_{task}.jsonl"))
    if not samples_files:
        raise EvaluationFailed(f"lmms-eval wrote no per-sample log for {task} beside {results_path}")
    samples = [json.loads(line) for line in samples_files[0].read_text().splitlines() if line.strip()]
    if expected_samples is not None and len(samples) != expected_samples:
        raise EvaluationFailed(f"{task}: expected {expected_samples} samples, lmms-eval logged {len(samples)}")
    empty = sum(not logged_answer(sample).strip() and not model_reported_generation(sample) for sample in samples)
    if samples and empty / len(samples) > max_empty_fraction:
        raise EvaluationFailed(
            f"{task}: {empty} of {len(samples)} answers are empty (more than {max_empty_fraction:.0%}); lmms-eval "
            f"wrappers turn generation errors into empty answers, see {log_path}"
        )
    return EvaluationOutput(results=results, samples=samples, results_path=results_path, samples_path=samples_files[0])


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


def sample_rows(samples: list[dict], metrics: tuple[str, ...] = ("exact_match", "anls")) -> list[dict]:
    """One flat row per sample: doc id, answer, target, scores and the plugin's per-sample accounting."""
    rows = []
    for sample in samples:
        row = {
            "doc_id": sample["doc_id"],
            "answer": logged_answer(sample),
            "target": sample.get("target"),
        }
        for metric in metrics:
            if metric in sample:
                row[metric] = float(sample[metric])
        counts = (sample.get("token_counts") or [None])[0] or {}
        row.update({key: value for key, value in counts.items() if not isinstance(value, (dict, list))})
        rows.append(row)
    return rows
