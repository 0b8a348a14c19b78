"""VISOR's training data: the train split of the synthetic tasks or a Hugging Face dataset in LLaVA-OneVision's
format (`load_hf_examples`), and the val rows that pick the viable configurations and label the policy
(`split_rows`, `read_split`, `examples_at`)."""

from __future__ import annotations

from pathlib import Path

from visor_model.examples import Example, read_examples
from visor_model.methods.visor.config import TrainData


def load_hf_examples(data: TrainData) -> list[Example]:
    """Training examples from a Hugging Face dataset (hub id at a pinned revision, or a local folder) in
    LLaVA-OneVision's data format: an `image` column and `conversations`, a list of {"from", "value"} turns; the
    first human turn (its `<image>` placeholder removed) is the question, the gpt turn after it the answer. Rows
    without an image or without such a pair are skipped (and counted)."""
    import datasets

    split = data.split if data.limit is None else f"{data.split}[:{data.limit}]"
    try:
        table = datasets.load_dataset(data.dataset, data.subset, revision=data.revision, split=split)
    except Exception as error:  # offline, unknown id, missing split ...
        raise RuntimeError(f"could not load VISOR training data {data.dataset!r} (subset {data.subset!r}, revision "
                           f"{data.revision!r}, split {split!r}): {error}") from None
    missing = {"image", "conversations"} - set(table.column_names)
    if missing:
        raise ValueError(f"dataset {data.dataset!r} lacks columns {sorted(missing)} (LLaVA-OneVision's format: "
                         "image, conversations)")
    examples, skipped = [], 0
    for row in table:
        turns = row["conversations"] or []
        human = next((i for i, t in enumerate(turns) if t["from"] == "human"), None)
        if row["image"] is None or human is None or human + 1 >= len(turns) or turns[human + 1]["from"] != "gpt":
            skipped += 1
            continue
        question = turns[human]["value"].replace("<image>", "").strip()
        examples.append(Example(task=data.dataset, image=row["image"].convert("RGB"), question=question,
                                answer=turns[human + 1]["value"].strip()))
    print(f"{len(examples)} training examples from {data.dataset} ({split}); {skipped} rows skipped (no image or "
          "no human/gpt turn pair)", flush=True)
    if not examples:
        raise ValueError(f"dataset {data.dataset!r} ({split}) has no row with an image and a human/gpt turn pair")
    return examples


def split_rows(task_dirs: list[Path], split: str, per_task: int | None = None, offset: int = 0
               ) -> list[tuple[int, Example]]:
    """(row index, example) of rows offset .. offset + per_task (all rows from offset when per_task is None)
    of each task's split; a split with fewer rows is an error naming the file."""
    rows = []
    for task_dir in task_dirs:
        path = Path(task_dir) / f"{split}.parquet"
        examples = read_examples(path, Path(task_dir).name)
        end = len(examples) if per_task is None else offset + per_task
        if end > len(examples) or offset >= len(examples):
            raise ValueError(f"{path} has {len(examples)} rows; rows {offset}..{end - 1} are needed "
                             f"(enlarge the benchmark's {split} split or lower the per-task counts)")
        rows += list(enumerate(examples))[offset:end]
    return rows


def read_split(task_dirs: list[Path], split: str, per_task: int | None = None, offset: int = 0) -> list[Example]:
    return [example for _, example in split_rows(task_dirs, split, per_task, offset)]


def examples_at(task_dirs: list[Path], split: str, keys: list[tuple[str, int]]) -> list[Example]:
    """The examples named by (task, row) pairs, in that order (e.g. the rows of a labels table)."""
    by_task = {Path(d).name: Path(d) for d in task_dirs}
    missing = sorted({task for task, _ in keys} - set(by_task))
    if missing:
        raise ValueError(f"labels name tasks {missing} that are not among the task folders {sorted(by_task)}")
    loaded = {task: read_examples(by_task[task] / f"{split}.parquet", task) for task in {t for t, _ in keys}}
    return [loaded[task][int(row)] for task, row in keys]

