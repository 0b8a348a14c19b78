"""lmms-eval's own task definitions on a few local documents in each task's real schema.

For each of the paper's benchmarks this writes, into one folder:
  - `data/`: a local dataset in the layout of the task's hub dataset repository (parquet files per config and
    split, and a README.md whose YAML header declares the configs), with documents whose columns and types are
    the ones the task's `utils.py` reads and whose images have the sizes the benchmark really has (DocVQA pages
    of 1700 x 2200 px and more, tall infographics, ...);
  - `<task>.yaml`: three lines, `include:` of the installed task YAML, the task name, and `dataset_path:` the
    local folder. Indexed alone (TaskManager(include_path=<folder>, include_defaults=False)) this runs the task's
    prompts, generation kwargs, `process_results`, filters and metrics unchanged (research/TOOLING.md).
No task code is copied. The documents are synthetic (drawn page-like images, made-up questions and answers);
scores on them are meaningless.
"""

from __future__ import annotations

import io
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml
from datasets.naming import camelcase_to_snakecase

from visor_model.files import sha256_file


@dataclass(frozen=True)
class RehearsalTask:
    """Where lmms-eval defines the task and what its dataset looks like."""

    task_yaml: str  # relative to lmms_eval/tasks
    config_name: str  # the dataset config the task loads (its dataset_name, or "default")
    split: str  # the task's test_split
    sizes: tuple  # (width, height) of the documents' images, cycled
    rows: Callable[[int, random.Random], dict]  # document i's columns, images excluded
    # images kept in a second hub dataset that the task's process_docs loads by id (GQA): (repo, config, split,
    # the documents' column naming the image); these go into a prepared `datasets` cache instead
    hub_images: tuple | None = None


def _docvqa(i, rng):
    return {"questionId": str(50000 + i), "question": f"What is the date in line {i + 1}?",
            "question_types": ["handwritten"], "docId": 1000 + i, "ucsf_document_id": f"doc{i:04d}",
            "ucsf_document_page_no": "1", "answers": [f"{rng.randint(1, 28)} march 19{rng.randint(50, 99)}"],
            "data_split": "val"}


def _infovqa(i, rng):
    return {"questionId": str(60000 + i), "question": f"What percentage of people chose option {i + 1}?",
            "answers": [f"{rng.randint(1, 99)}%"], "answer_type": ["single span"], "image_url": f"info{i}.jpeg",
            "operation/reasoning": [""], "ocr": "", "data_split": "val"}


def _chartqa(i, rng):
    return {"type": ["human_test", "augmented_test"][i % 2], "question": f"What is the value of bar {i + 1}?",
            "answer": str(rng.randint(1, 90))}


def _ocrbench(i, rng):
    kinds = [("IIIT5K", "Regular Text Recognition"), ("HME100k", "Handwritten Mathematical Expression Recognition"),
             ("ESTVQA", "Scene Text-centric VQA"), ("docVQA", "Doc-oriented VQA")]
    dataset, question_type = kinds[i % len(kinds)]
    return {"dataset": dataset, "question": "what is written in the image?", "question_type": question_type,
            "answer": [f"word{rng.randint(0, 9)}"]}


def _textvqa(i, rng):
    answer = rng.choice(["stop", "coca cola", "7", "yes"])
    return {"image_id": f"img{i:04d}", "question_id": 34602 + i, "question": "what does the sign say?",
            "question_tokens": ["what", "does", "the", "sign", "say"], "image_width": 1024, "image_height": 768,
            "flickr_original_url": "", "flickr_300k_url": "", "answers": [answer] * 10,
            "image_classes": ["sign"], "set_name": "val", "ocr_tokens": [answer]}


def _gqa(i, rng):
    return {"id": str(20000000 + i), "imageId": f"n{i:06d}", "question": "Is the sky blue or white?",
            "answer": rng.choice(["blue", "white"]), "fullAnswer": "The sky is blue.", "isBalanced": True,
            "groups": {"global": None, "local": "10c-sky_color"}, "entailed": "", "equivalent": "",
            "types": {"structural": "choose", "semantic": "attr", "detailed": "choose"},
            "semanticStr": ""}


def _scienceqa(i, rng):
    choices = ["Asia", "Africa", "Europe", "South America"][: 2 + i % 3]
    return {"question": "Which continent is highlighted?", "choices": choices, "answer": rng.randrange(len(choices)),
            "hint": "" if i % 2 else "Look at the map.", "task": "closed choice", "grade": "grade4",
            "subject": "social science", "topic": "geography", "category": "Geography", "skill": "Identify continents",
            "lecture": "", "solution": ""}


def _pope(i, rng):
    return {"id": str(i), "question_id": str(i + 1), "question": f"Is there a {['dog', 'chair'][i % 2]} in the image?",
            "answer": ["yes", "no"][i % 2], "image_source": f"COCO_val2014_{i:012d}",
            "category": ["adversarial", "popular", "random"][i % 3]}


def _mme(i, rng):
    # MME scores images in pairs (one yes, one no question per image): documents 2k and 2k+1 share an image id
    category = ["existence", "OCR", "commonsense_reasoning", "code_reasoning"][(i // 2) % 4]
    return {"question_id": f"{category}/{i // 2:012d}.jpg", "question": "Is there a car in this image? Please "
            "answer yes or no.", "answer": ["Yes", "No"][i % 2], "category": category}


def _mmbench(i, rng):
    return {"index": i, "question": "Which object is on the left?", "hint": "" if i % 2 else "A picture of a room.",
            "A": "a table", "B": "a lamp", "C": "a chair", "D": "a sofa", "answer": "ABCD"[rng.randrange(4)],
            "category": ["object_localization", "image_scene"][i % 2], "source": "rehearsal",
            "L2-category": ["finegrained_perception (instance-level)", "coarse_perception"][i % 2], "comment": "",
            "split": "dev"}


def _ai2d(i, rng):
    options = ["leaf", "stem", "root", "flower"]
    return {"question": "Which label points to the root?", "options": options, "answer": str(rng.randrange(4))}


def _realworldqa(i, rng):
    return {"question": "How many cars are in front of the truck?\nPlease answer directly with a single word or "
            "number.", "answer": str(rng.randint(0, 4))}


TASKS = {
    # pages of the UCSF industry documents: mostly 1700 x 2200 (200 dpi letter), some larger
    "docvqa_val": RehearsalTask("docvqa/docvqa_val.yaml", "DocVQA", "validation",
                                ((1700, 2200), (2200, 1700), (1760, 2280), (2544, 3296)), _docvqa),
    # infographics: narrow and very tall
    "infovqa_val": RehearsalTask("infovqa/infovqa_val.yaml", "InfographicVQA", "validation",
                                 ((1080, 3000), (800, 2400), (1200, 5000), (1600, 1200)), _infovqa),
    "chartqa": RehearsalTask("chartqa/chartqa.yaml", "default", "test", ((800, 600), (850, 567), (1200, 700)),
                             _chartqa),
    "ocrbench": RehearsalTask("ocrbench/ocrbench.yaml", "default", "test",
                              ((120, 40), (600, 150), (1024, 768), (1700, 2200)), _ocrbench),
    "textvqa_val": RehearsalTask("textvqa/textvqa_val.yaml", "default", "validation", ((1024, 768), (768, 1024)),
                                 _textvqa),
    "gqa": RehearsalTask("gqa/gqa.yaml", "testdev_balanced_instructions", "testdev", ((640, 480), (500, 375)), _gqa,
                         hub_images=("lmms-lab-encoder/GQA", "testdev_balanced_images", "testdev", "imageId")),
    "scienceqa_img": RehearsalTask("scienceqa/scienceqa_img.yaml", "ScienceQA-IMG", "test",
                                   ((302, 232), (640, 360), (180, 120)), _scienceqa),
    "pope": RehearsalTask("pope/pope.yaml", "default", "test", ((640, 480), (480, 640), (640, 427)), _pope),
    "mme": RehearsalTask("mme/mme.yaml", "default", "test", ((1024, 683), (1024, 683), (512, 512), (512, 512)), _mme),
    "mmbench_en_dev_static": RehearsalTask("mmbench/mmbench_en_dev_static.yaml", "en", "dev",
                                           ((512, 384), (800, 600)), _mmbench),
    "ai2d": RehearsalTask("ai2d/ai2d.yaml", "default", "test", ((800, 600), (1500, 1000)), _ai2d),
    "realworldqa": RehearsalTask("realworldqa/realworldqa.yaml", "default", "test", ((1080, 1920), (1920, 1080)),
                                 _realworldqa),
}


def lmms_eval_tasks_dir() -> Path:
    import lmms_eval

    return Path(lmms_eval.__file__).parent / "tasks"


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


def write_task(name: str, folder: Path, documents: int, seed: int, datasets_cache: Path) -> dict:
    """The local dataset and task YAML of lmms-eval task `name` in `folder` (and, for a task whose
    process_docs loads a second hub dataset, that dataset prepared in `datasets_cache`, the HF_DATASETS_CACHE
    of the jobs); returns a manifest."""
    import datasets

    if name not in TASKS:
        raise ValueError(f"no rehearsal documents for lmms-eval task {name!r}; known: {', '.join(TASKS)}")
    spec = TASKS[name]
    installed = lmms_eval_tasks_dir() / spec.task_yaml
    if not installed.is_file():
        raise FileNotFoundError(f"lmms-eval task YAML {installed} of {name} is not installed")
    rng = random.Random(f"{seed}/{name}")
    rows = []
    for i in range(documents):
        row = spec.rows(i, rng)
        width, height = spec.sizes[i % len(spec.sizes)]
        if name == "mme":  # a pair shares its image
            rng_image = random.Random(f"{seed}/{name}/{i // 2}")
        else:
            rng_image = rng
        row["image"] = {"bytes": png_bytes(page_image(width, height, rng_image)), "path": None}
        rows.append(row)
    if spec.hub_images is not None:
        repo, config_name, split, key = spec.hub_images
        images = [{"id": row[key], "image": row.pop("image")} for row in rows]
        prepare_datasets_cache(images, datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()}),
                               Path(datasets_cache), repo, config_name, split)
    features = datasets.Dataset.from_list([{k: v for k, v in row.items() if k != "image"} for row in rows]).features
    if spec.hub_images is None:
        features["image"] = datasets.Image()
    # `datasets` caches a local dataset under its folder's name and config, not its content: the folder is
    # named by its content so that documents of another run (another workdir, another count) are never reused
    staging = folder / "dataset.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / spec.config_name).mkdir(parents=True)
    parquet = staging / spec.config_name / f"{spec.split}-00000-of-00001.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(parquet))
    (staging / "README.md").write_text(dataset_readme(spec.config_name, spec.split))
    data = folder / f"{name}-{sha256_file(parquet)[:16]}"
    shutil.rmtree(data, ignore_errors=True)
    staging.rename(data)
    task_yaml = {"include": str(installed), "task": name, "dataset_path": str(data.resolve())}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task_yaml, sort_keys=False))
    return {"task": name, "documents": documents, "include": str(installed), "dataset_path": str(data.resolve()),
            "config_name": spec.config_name, "split": spec.split,
            "image_sizes": [list(spec.sizes[i % len(spec.sizes)]) for i in range(documents)]}


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
