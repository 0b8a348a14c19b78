"""The question-answer examples that the reference models and VISOR train and validate on: a synthetic task's
split (`read_examples`, written by `visor_model.reference.tasks`), how an answer is scored (`exact_match`), and
how a runner answers a list of them in batches (`answer_examples`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

ANSWER_TOKENS = 4  # new tokens a runner generates per answer (the synthetic answers are one short word)


@dataclass
class Example:
    task: str
    image: Image.Image
    question: str
    answer: str
    marker_size: int | None = None  # synthetic scenes: side of the marker in pixels (the curriculum uses it)


def read_examples(parquet_path: str | Path, task: str) -> list[Example]:
    """Rows of a benchmark split written by `visor_model.reference.tasks` (images embedded as bytes)."""
    columns = ["image", "question", "answer"]
    if "marker_size" in pq.read_schema(parquet_path).names:
        columns.append("marker_size")
    table = pq.read_table(parquet_path, columns=columns).to_pylist()
    return [
        Example(task=task, image=Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"),
                question=row["question"], answer=row["answer"], marker_size=row.get("marker_size"))
        for row in table
    ]


def exact_match(answer: str, target: str) -> float:
    """1.0 when the answer equals the target up to case and surrounding white space."""
    return float(answer.strip().lower() == target.strip().lower())


def answer_examples(runner, examples: list[Example], batch_size: int = 32) -> list:
    """The records of `runner.generate` (a `visor_model.llava.runner.VisionLanguageRunner` or VISOR's runner) for
    `examples`, in order, `batch_size` at a time, greedy, `ANSWER_TOKENS` new tokens each; each sample's key is
    its position in `examples`."""
    records = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        records += runner.generate([e.image for e in chunk], [e.question for e in chunk],
                                   [str(start + i) for i in range(len(chunk))], [ANSWER_TOKENS] * len(chunk))
    return records
