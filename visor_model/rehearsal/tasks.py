"""lmms-eval's own task definitions on a few local documents in each task's real schema.

For a benchmark of the rehearsal (config/rehearsal.yaml: source rehearsal) this writes, into one folder:
  - `data/`: a local dataset in the layout of the task's hub dataset repository (parquet files per config and
    split, and a README.md whose YAML header declares the configs), with documents whose columns and types are
    the ones the task's `utils.py` reads and whose images have the sizes the benchmark really has (DocVQA pages
    of 1700 x 2200 px and more, tall infographics, ...);
  - `<task>.yaml`: three lines, `include:` of the installed task YAML, the task name, and `dataset_path:` the
    local folder. Indexed alone (TaskManager(include_path=<folder>, include_defaults=False)) this runs the task's
    prompts, generation kwargs, `process_results`, filters and metrics unchanged (research/TOOLING.md).
No task code is copied. What lmms-eval defines is read from the installed task YAML (`task_definition`: the file,
the dataset config and split the task loads, its metrics); the documents are the benchmark's config entry's
(`rehearsal`: rows in the task's schema and the image sizes, schema-validated) with drawn page-like images.
They are synthetic (made-up questions and answers): scores on them are meaningless.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from datasets.naming import camelcase_to_snakecase

from visor_model.files import sha256_file


@dataclass(frozen=True)
class TaskDefinition:
    """Where lmms-eval defines a task and what it loads, read from the installed task YAML (its includes
    resolved, `!function` tags left unread)."""

    task_yaml: Path
    config_name: str  # the dataset config the task loads (its dataset_name, or "default")
    split: str  # the task's test_split
    metrics: tuple[str, ...]  # its metric_list


class _TaskYamlLoader(yaml.SafeLoader):
    """A task YAML as data: `!function utils.x` stays the string it names (lmms-eval's own reader imports it)."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def lmms_eval_tasks_dir() -> Path:
    """lmms-eval's built-in task folder (found without importing lmms-eval: its import takes seconds)."""
    return Path(importlib.util.find_spec("lmms_eval").origin).parent / "tasks"


def _read_task_yaml(path: Path) -> dict:
    """A task YAML with its `include`s under it, as lmms_eval.utils.load_yaml_config reads them (an include is a
    path or relative to the YAML's folder; a later include and the YAML itself win)."""
    config = yaml.load(path.read_text(), Loader=_TaskYamlLoader)
    includes = config.pop("include", [])
    merged = {}
    for include in [includes] if isinstance(includes, str) else includes:
        included = Path(include) if Path(include).is_file() else path.parent / include
        merged.update(_read_task_yaml(included))
    return {**merged, **config}


_TASK_LINE = re.compile(r"""^task:\s*["']?([^"'\s#]+)["']?\s*$""", re.M)


@functools.cache
def _task_index() -> dict[str, list[Path]]:
    """lmms-eval's built-in task names -> the YAMLs that name them (`task: <name>`)."""
    index = {}
    for path in sorted(lmms_eval_tasks_dir().rglob("*.yaml")):
        for name in _TASK_LINE.findall(path.read_text()):
            index.setdefault(name, []).append(path)
    return index


def task_definition(task: str) -> TaskDefinition:
    """lmms-eval's definition of built-in task `task`: the YAML that names it, its dataset config, test split and
    metrics. ValueError naming the task where lmms-eval has none of that name or it has no test split."""
    found = _task_index().get(task, [])
    if len(found) != 1:
        where = ", ".join(str(path) for path in found) or f"no YAML under {lmms_eval_tasks_dir()}"
        raise ValueError(f"lmms-eval task {task!r} is not one built-in task ({where} names it)")
    config = _read_task_yaml(found[0])
    if "test_split" not in config:
        raise ValueError(f"lmms-eval task {task!r} ({found[0]}) has no test_split: the rehearsal writes that split")
    return TaskDefinition(found[0], str(config.get("dataset_name", "default")), str(config["test_split"]),
                          tuple(metric["metric"] for metric in config.get("metric_list", [])))


def _fill(value, i: int, image: int):
    """A row's value for document i of image `image`: strings formatted with {i} and {image}, containers
    item by item."""
    if isinstance(value, str):
        return value.format(i=i, image=image)
    if isinstance(value, list):
        return [_fill(item, i, image) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, i, image) for key, item in value.items()}
    return value


def document_rows(benchmark: str, rehearsal: dict, documents: int) -> list[tuple[dict, int]]:
    """(columns, image index) of each of `documents` documents from a benchmark's `rehearsal` entry (its
    `rows` cycled, `numbered` columns counted up, `documents_per_image` documents to an image)."""
    per_image = rehearsal.get("documents_per_image", 1)
    out = []
    for i in range(documents):
        k = i % len(rehearsal["rows"])
        template = rehearsal["rows"][k]
        try:
            row = _fill(template, i, i // per_image)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"config error at benchmarks.{benchmark}.rehearsal.rows[{k}]: {error!r} in a string: "
                             "a string may name {i} and {image} (a literal brace is written twice)") from error
        for column in rehearsal.get("numbered", []):
            if not isinstance(template.get(column), int) or isinstance(template[column], bool):
                raise ValueError(f"config error at benchmarks.{benchmark}.rehearsal.numbered: {column!r} is not an "
                                 f"integer column of row {k}")
            row[column] = template[column] + i
        out.append((row, i // per_image))
    return out


def page_image(width: int, height: int, rng: random.Random):
    """A page-like image: light background with dark text-line bars and a few coloured blocks (compresses well,
    so large documents stay small on disk)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), tuple(rng.randint(225, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    line = max(4, height // 60)
    for y in range(line, height - line, 2 * line):
        x0 = rng.randint(0, width // 10)
        draw.rectangle([x0, y, x0 + rng.randint(width // 4, width - x0), y + line // 2], fill=(20, 20, 20))
    for _ in range(3):
        x, y = rng.randrange(width), rng.randrange(height)
        draw.rectangle([x, y, x + width // 6, y + height // 8], fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def dataset_readme(config_name: str, split: str) -> str:
    header = {"configs": [{"config_name": config_name,
                           "data_files": [{"split": split, "path": f"{config_name}/{split}-*"}]}]}
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\nRehearsal documents (synthetic).\n"


def write_task(benchmark: str, spec: dict, folder: Path, seed: int, datasets_cache: Path) -> dict:
    """The local dataset and task YAML of `benchmark` (its config entry `spec`: the lmms-eval `task`, default the
    benchmark's name; `test` documents; their `rehearsal` rows and images) in `folder` (and, for a task whose
    process_docs loads a second hub dataset, that dataset prepared in `datasets_cache`, the HF_DATASETS_CACHE of
    the jobs); returns a manifest."""
    import datasets

    if "rehearsal" not in spec:
        raise ValueError(f"config error at benchmarks.{benchmark}: no rehearsal documents (key `rehearsal`: "
                         "workflow/schemas/config.schema.yaml)")
    task = spec.get("task", benchmark)
    definition = task_definition(task)
    if "metric" in spec and spec["metric"] not in definition.metrics:
        raise ValueError(f"config error at benchmarks.{benchmark}.metric: lmms-eval task {task!r} has no metric "
                         f"{spec['metric']!r}; its metrics: {', '.join(definition.metrics)}")
    rehearsal, documents = spec["rehearsal"], spec["test"]
    rows, sizes = [], []
    for row, image in document_rows(benchmark, rehearsal, documents):
        width, height = rehearsal["images"][image % len(rehearsal["images"])]
        picture = page_image(width, height, random.Random(f"{seed}/{task}/{image}"))
        rows.append({**row, "image": {"bytes": png_bytes(picture), "path": None}})
        sizes.append([width, height])
    if "hub_images" in rehearsal:
        hub = rehearsal["hub_images"]
        images = [{"id": row[hub["key"]], "image": row.pop("image")} for row in rows]
        prepare_datasets_cache(images, datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()}),
                               Path(datasets_cache), hub["repo"], hub["config"], hub["split"])
    features = datasets.Dataset.from_list([{k: v for k, v in row.items() if k != "image"} for row in rows]).features
    if "hub_images" not in rehearsal:
        features["image"] = datasets.Image()
    # `datasets` caches a local dataset under its folder's name and config, not its content: the folder is
    # named by its content so that documents of another run (another workdir, another count) are never reused
    staging = folder / "dataset.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / definition.config_name).mkdir(parents=True)
    parquet = staging / definition.config_name / f"{definition.split}-00000-of-00001.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(parquet))
    (staging / "README.md").write_text(dataset_readme(definition.config_name, definition.split))
    data = folder / f"{task}-{sha256_file(parquet)[:16]}"
    shutil.rmtree(data, ignore_errors=True)
    staging.rename(data)
    task_yaml = {"include": str(definition.task_yaml), "task": task, "dataset_path": str(data.resolve())}
    (folder / f"{task}.yaml").write_text(yaml.safe_dump(task_yaml, sort_keys=False))
    return {"task": task, "documents": documents, "include": str(definition.task_yaml),
            "dataset_path": str(data.resolve()), "config_name": definition.config_name, "split": definition.split,
            "image_sizes": sizes}


def prepare_datasets_cache(rows: list[dict], features, cache: Path, repo: str, config_name: str, split: str) -> Path:
    """A `datasets` cache entry for hub dataset `repo` (config, split) holding `rows`, as `load_dataset(repo,
    config_name)` finds it offline (HF_DATASETS_OFFLINE=1, HF_DATASETS_CACHE=`cache`): its cached-dataset
    fallback looks for <namespace>___<name>/<config>/<version>/<hash>/ with <name>-<split>.arrow files."""
    import datasets
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, name = repo.split("/")
    name = camelcase_to_snakecase(name)
    root = Path(cache) / f"{namespace}___{name}"
    shutil.rmtree(root, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / f"{split}.parquet"
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(parquet))
        builder = Parquet(cache_dir=tmp, dataset_name=name, config_name=config_name, hash="0" * 16,
                          data_files=DataFilesDict.from_patterns({split: [str(parquet)]}))
        builder.download_and_prepare()
        prepared = Path(builder.cache_dir)
        target = root / config_name / prepared.parent.name / prepared.name
        target.parent.mkdir(parents=True)
        shutil.move(str(prepared), target)
    return target
