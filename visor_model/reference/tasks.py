"""Deterministic synthetic VQA benchmarks that probe coarse, medium and fine image detail.

Every image is a scene: a noisy pastel background, one medium-size dark shape and one tiny marker square.
Each task asks about one of the three, so a model (or a token-pruning method) can be compared on
coarse (background colour), medium (shape) and fine (marker colour) visual detail.

    rows = generate_split("synth_marker", "train", n=3000, seed=0)
    write_task("synth_marker", "data/synth_marker", splits={"train": 3000, "test": 200}, seed=0)

`write_task` writes a self-contained lmms-eval task folder (parquet data, task YAML, utils shim, manifest),
usable with `lmms-eval --include_path <folder> --tasks synth_marker`.
"""

import argparse
import dataclasses
import hashlib
import io
import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from visor_model.files import sha256_file, write_atomically

# Colour names are answers, so every name is a single lowercase word.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (250, 195, 210),
    "mint": (185, 240, 200),
    "sky": (180, 215, 250),
    "sand": (240, 220, 170),
    "lilac": (215, 190, 250),
    "silver": (200, 200, 200),
}
MARKER_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 200, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
# Shape colours are never asked about; they are dark so the shape stands out from any background.
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "navy": (30, 35, 90),
    "maroon": (100, 25, 40),
    "forest": (25, 80, 45),
    "charcoal": (60, 60, 60),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

# Directory of the lmms-eval task template and hooks (the `lmms_plugins.tasks` package beside this one).
LMMS_TASKS_DIR = Path(__file__).resolve().parents[2] / "lmms_plugins" / "tasks"
YAML_TEMPLATE = LMMS_TASKS_DIR / "synthetic_task.yaml.template"
UTILS_SHIM = ('''"""Written by visor_model.reference.tasks.write_task: lmms-eval resolves `!function utils.*` '''
              '''next to the YAML."""

from lmms_plugins.tasks.synthetic_utils import doc_to_text, doc_to_visual, process_results  # noqa: F401
''')


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Stored in each task's manifest.json."""

    # (width, height) choices. With LLaVA-NeXT AnyRes (crop 48 px, pinpoints (h, w) 48x96, 96x48, 96x96,
    # 48x144, 144x48) these give every grid: 2x2 (square, 4:3, 3:4, 5:4), 1x3, 3x1, 1x2 and 2x1 crops.
    sizes: tuple[tuple[int, int], ...] = (
        (96, 96),
        (112, 84),
        (84, 112),
        (144, 60),
        (60, 144),
        (120, 96),
        (112, 56),
        (56, 112),
    )
    marker_size: int = 4  # side of the marker square in pixels (val and test splits)
    # Training scenes draw the marker side from these sizes: from-scratch models learn to look for a 3-pixel
    # marker among ~200 visual tokens only after bigger markers taught them where to look (see
    # visor_model.reference.recipe.curriculum_weights). Evaluation splits always use `marker_size`.
    train_marker_sizes: tuple[int, ...] = (4, 6, 8, 10, 12, 14)
    shape_fraction: float = 0.3  # shape side as a fraction of the shorter image side
    noise: int = 6  # background pixels get uniform integer noise in [-noise, noise]
    margin: int = 2  # minimum distance of shape and marker from the image border
    marker_gap: int = 1  # minimum free pixels between the marker and the shape's bounding box


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "coarse", "medium" or "fine": the scale of the detail the question is about
    question: str
    answers: tuple[str, ...]
    attribute: str  # the Scene field that holds the answer


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "synth_background", "coarse", "What colour is the background?", tuple(BACKGROUND_COLOURS), "background"
        ),
        TaskSpec("synth_shape", "medium", "Which shape is drawn?", SHAPES, "shape"),
        TaskSpec("synth_marker", "fine", "What colour is the small square?", tuple(MARKER_COLOURS), "marker_colour"),
    )
}


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image; `render_scene` is a pure function of it."""

    width: int
    height: int
    background: str
    shape: str
    shape_colour: str
    shape_x: int  # top-left corner of the shape's square bounding box
    shape_y: int
    shape_size: int
    marker_colour: str
    marker_x: int  # top-left corner of the marker square
    marker_y: int
    marker_size: int
    noise_seed: int


def words(text: str) -> list[str]:
    """Lowercase word-level tokens of a text; punctuation marks are tokens of their own."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def vocabulary() -> list[str]:
    """Every token that occurs in a question or an answer of any task, sorted."""
    tokens = set()
    for spec in TASKS.values():
        tokens.update(words(spec.question))
        for answer in spec.answers:
            tokens.update(words(answer))
    return sorted(tokens)


def split_seed(seed: int, task: str, split: str) -> int:
    """A stable 128-bit seed per (seed, task, split); unlike hash() it is the same in every process."""
    digest = hashlib.sha256(f"{seed}/{task}/{split}".encode()).digest()
    return int.from_bytes(digest[:16], "little")


def sample_scene(
    rng: np.random.Generator,
    config: SceneConfig,
    background: str | None = None,
    shape: str | None = None,
    marker_colour: str | None = None,
    marker_sizes: tuple[int, ...] | None = None,
) -> Scene:
    """Draw a random scene; background, shape and marker_colour are drawn only where not given; the marker
    side is config.marker_size unless several `marker_sizes` are offered to draw from."""
    width, height = config.sizes[rng.integers(len(config.sizes))]
    background = background or str(rng.choice(list(BACKGROUND_COLOURS)))
    shape = shape or str(rng.choice(SHAPES))
    shape_colour = str(rng.choice(list(SHAPE_COLOURS)))
    marker_colour = marker_colour or str(rng.choice(list(MARKER_COLOURS)))

    shape_size = round(config.shape_fraction * min(width, height))
    shape_x = int(rng.integers(config.margin, width - config.margin - shape_size + 1))
    shape_y = int(rng.integers(config.margin, height - config.margin - shape_size + 1))

    # Uniform over all marker positions inside the margin that keep clear of the shape's bounding box.
    marker_sizes = marker_sizes or (config.marker_size,)
    m = int(marker_sizes[rng.integers(len(marker_sizes))]) if len(marker_sizes) > 1 else marker_sizes[0]
    gap = config.marker_gap
    xs = np.arange(config.margin, width - config.margin - m + 1)
    ys = np.arange(config.margin, height - config.margin - m + 1)
    clear_x = (xs + m + gap <= shape_x) | (xs >= shape_x + shape_size + gap)
    clear_y = (ys + m + gap <= shape_y) | (ys >= shape_y + shape_size + gap)
    valid_y, valid_x = np.nonzero(clear_y[:, None] | clear_x[None, :])
    choice = rng.integers(len(valid_x))

    return Scene(
        width=int(width),
        height=int(height),
        background=background,
        shape=shape,
        shape_colour=shape_colour,
        shape_x=shape_x,
        shape_y=shape_y,
        shape_size=shape_size,
        marker_colour=marker_colour,
        marker_x=int(xs[valid_x[choice]]),
        marker_y=int(ys[valid_y[choice]]),
        marker_size=m,
        noise_seed=int(rng.integers(2**63)),
    )


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape filling its bounding box, sampled at pixel centres."""
    centres = np.arange(size) + 0.5
    y, x = np.meshgrid(centres, centres, indexing="ij")
    half = size / 2
    if shape == "circle":
        return (x - half) ** 2 + (y - half) ** 2 <= half**2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # apex at the top centre, base along the bottom edge
        return np.abs(x - half) <= y / 2
    if shape == "cross":  # a plus sign with arms one third of the side thick
        return (np.abs(x - half) <= size / 6) | (np.abs(y - half) <= size / 6)
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, config: SceneConfig) -> Image.Image:
    """Noisy background, flat shape and flat marker (only the background carries noise)."""
    noise_rng = np.random.default_rng(scene.noise_seed)
    noise = noise_rng.integers(-config.noise, config.noise + 1, size=(scene.height, scene.width, 3))
    pixels = np.clip(np.array(BACKGROUND_COLOURS[scene.background]) + noise, 0, 255).astype(np.uint8)

    box = pixels[scene.shape_y : scene.shape_y + scene.shape_size, scene.shape_x : scene.shape_x + scene.shape_size]
    box[shape_mask(scene.shape, scene.shape_size)] = SHAPE_COLOURS[scene.shape_colour]

    x, y, m = scene.marker_x, scene.marker_y, scene.marker_size
    pixels[y : y + m, x : x + m] = MARKER_COLOURS[scene.marker_colour]
    return Image.fromarray(pixels)


def generate_split(task: str, split: str, n: int, seed: int = 0, config: SceneConfig = SceneConfig()) -> list[dict]:
    """n rows of one task's split, a deterministic function of (task, split, n, seed, config).

    Each split draws from its own random stream (and every image from its own 63-bit noise seed), so
    splits do not share scenes. Answers are balanced: every answer occurs n // len(answers) or one more
    times, in random order; changing n therefore changes every row, not just the tail.
    """
    spec = TASKS[task]
    rng = np.random.default_rng(split_seed(seed, task, split))
    answers = rng.permutation(np.resize(np.array(spec.answers), n))
    marker_sizes = config.train_marker_sizes if split == "train" else (config.marker_size,)
    rows = []
    for index, answer in enumerate(answers):
        scene = sample_scene(rng, config, marker_sizes=marker_sizes, **{spec.attribute: str(answer)})
        rows.append(
            {
                "id": f"{task}-{split}-{index:05d}",
                "image": render_scene(scene, config),
                "question": spec.question,
                "answer": str(answer),
                **dataclasses.asdict(scene),
            }
        )
    return rows


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(rows: list[dict], path: Path) -> None:
    """Parquet with the image column as the `datasets.Image()` feature (PNG bytes), which lmms-eval decodes to PIL."""
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    columns["image"] = [{"bytes": png_bytes(image), "path": None} for image in columns["image"]]
    dataset = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    # The arrow table carries the features in its schema metadata, which `datasets` reads back.
    write_atomically(path, lambda tmp: pq.write_table(dataset.data.table, tmp))


def render_task_yaml(task: str) -> str:
    spec = TASKS[task]
    return string.Template(YAML_TEMPLATE.read_text()).substitute(task=spec.name, kind=spec.kind)


def write_task(
    task: str, out_dir: str | os.PathLike, splits: dict[str, int], seed: int = 0, config: SceneConfig = SceneConfig()
) -> dict:
    """Write an lmms-eval task folder: <split>.parquet per split, <task>.yaml, utils.py and manifest.json.

    The YAML evaluates the "test" split, so `splits` must include it. manifest.json is written last, so its
    presence means the folder is complete. Returns the manifest.
    """
    if splits.get("test", 0) < 1:
        raise ValueError(f"splits must include a non-empty 'test' split, got {splits}")
    spec = TASKS[task]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    sha256 = {}
    for split, n in splits.items():
        path = out_dir / f"{split}.parquet"
        write_parquet(generate_split(task, split, n, seed, config), path)
        sha256[path.name] = sha256_file(path)

    write_atomically(out_dir / "utils.py", lambda tmp: tmp.write_text(UTILS_SHIM))
    write_atomically(out_dir / f"{task}.yaml", lambda tmp: tmp.write_text(render_task_yaml(task)))
    manifest = {
        "task": spec.name,
        "kind": spec.kind,
        "question": spec.question,
        "answers": list(spec.answers),
        "seed": seed,
        "config": dataclasses.asdict(config),
        "splits": dict(splits),
        "sha256": sha256,
    }
    write_atomically(out_dir / "manifest.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic VQA task folder for lmms-eval.")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=3000, help="training rows (0 to skip)")
    parser.add_argument("--val", type=int, default=0, help="validation rows (0 to skip)")
    parser.add_argument("--test", type=int, default=200, help="test rows (evaluated by lmms-eval)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--marker-size", type=int, default=SceneConfig.marker_size)
    args = parser.parse_args()

    splits = {name: n for name, n in (("train", args.train), ("val", args.val), ("test", args.test)) if n > 0}
    config = SceneConfig(marker_size=args.marker_size)
    manifest = write_task(args.task, args.out, splits, seed=args.seed, config=config)
    print(json.dumps({"out": args.out, "splits": manifest["splits"], "sha256": manifest["sha256"]}, indent=2))


if __name__ == "__main__":
    main()
