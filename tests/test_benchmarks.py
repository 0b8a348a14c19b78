"""Tests for the synthetic VQA benchmarks and their lmms-eval task folders."""

import os

# Before anything imports huggingface_hub / datasets, which read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import collections
import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from lmms_plugins.tasks.synthetic_utils import anls, levenshtein, normalise_answer, process_results
from visor_model.reference import tasks
from visor_model.reference.tasks import (
    MARKER_COLOURS,
    SHAPE_COLOURS,
    SHAPES,
    TASKS,
    SceneConfig,
    generate_split,
    render_scene,
    sample_scene,
    shape_mask,
    vocabulary,
    words,
    write_task,
)


def pixels(rows):
    return [np.asarray(row["image"]) for row in rows]


def metadata(rows):
    return [{key: value for key, value in row.items() if key != "image"} for row in rows]


def test_task_registry_and_vocabulary():
    assert {name: spec.kind for name, spec in TASKS.items()} == {
        "synth_background": "coarse",
        "synth_shape": "medium",
        "synth_marker": "fine",
    }
    vocab = set(vocabulary())
    for spec in TASKS.values():
        assert len(set(spec.answers)) == len(spec.answers) >= 4
        for answer in spec.answers:
            assert answer.isalpha() and answer == answer.lower()
            assert answer in vocab
        assert set(words(spec.question)) <= vocab
    assert words("What colour is the small square?") == ["what", "colour", "is", "the", "small", "square", "?"]
    assert vocabulary() == sorted(vocab)


def test_generate_split_is_deterministic():
    rows = generate_split("synth_marker", "train", 12, seed=0)
    again = generate_split("synth_marker", "train", 12, seed=0)
    assert metadata(rows) == metadata(again)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(rows), pixels(again)))

    other_seed = generate_split("synth_marker", "train", 12, seed=1)
    assert not any(np.array_equal(a, b) for a, b in zip(pixels(rows), pixels(other_seed)))

    first = rows[0]
    assert first["id"] == "synth_marker-train-00000"
    assert first["question"] == "What colour is the small square?"
    assert first["answer"] == first["marker_colour"]
    assert first["image"].mode == "RGB" and first["image"].size == (first["width"], first["height"])


def test_splits_do_not_share_scenes():
    train = generate_split("synth_shape", "train", 40, seed=0)
    test = generate_split("synth_shape", "test", 40, seed=0)
    val = generate_split("synth_shape", "val", 40, seed=0)
    ids = [row["id"] for row in train + test + val]
    assert len(set(ids)) == len(ids)
    images = {np.asarray(row["image"]).tobytes() for row in train + test + val}
    assert len(images) == len(ids)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_answers_are_balanced(task):
    spec = TASKS[task]
    rows = generate_split(task, "test", 62, seed=3)
    counts = collections.Counter(row["answer"] for row in rows)
    assert set(counts) == set(spec.answers)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert all(row["answer"] == row[spec.attribute] for row in rows)
    # The attributes not asked about still vary.
    assert len({row["background"] for row in rows}) > 1 and len({row["shape"] for row in rows}) > 1


@pytest.mark.parametrize("marker_size", [3, 6])
def test_marker_is_inside_and_clear_of_the_shape(marker_size):
    config = SceneConfig(marker_size=marker_size)
    rng = np.random.default_rng(0)
    m = marker_size
    for _ in range(200):
        scene = sample_scene(rng, config)
        x, y, s = scene.shape_x, scene.shape_y, scene.shape_size
        assert config.margin <= scene.marker_x <= scene.width - config.margin - m
        assert config.margin <= scene.marker_y <= scene.height - config.margin - m
        assert config.margin <= x <= scene.width - config.margin - s
        assert config.margin <= y <= scene.height - config.margin - s
        apart_x = scene.marker_x + m + config.marker_gap <= x or scene.marker_x >= x + s + config.marker_gap
        apart_y = scene.marker_y + m + config.marker_gap <= y or scene.marker_y >= y + s + config.marker_gap
        assert apart_x or apart_y

        image = np.asarray(render_scene(scene, config))
        marker = image[scene.marker_y : scene.marker_y + m, scene.marker_x : scene.marker_x + m]
        assert (marker == MARKER_COLOURS[scene.marker_colour]).all()
        # The whole shape is drawn: the marker covers none of it.
        box = image[y : y + s, x : x + s]
        drawn = (box == SHAPE_COLOURS[scene.shape_colour]).all(axis=-1)
        assert np.array_equal(drawn, shape_mask(scene.shape, s))


def test_every_size_and_shape_renders():
    config = SceneConfig()
    rng = np.random.default_rng(0)
    for size in config.sizes:
        for shape in SHAPES:
            scene = sample_scene(rng, dataclasses.replace(config, sizes=(size,)), shape=shape)
            image = render_scene(scene, config)
            assert image.size == size and image.mode == "RGB"
            assert scene.shape_size == round(0.3 * min(size))
            mask = shape_mask(shape, scene.shape_size)
            assert 0.2 < mask.mean() <= 1.0
    # Shapes differ from each other, so the shape task is well posed.
    masks = {shape: shape_mask(shape, 29).tobytes() for shape in SHAPES}
    assert len(set(masks.values())) == len(SHAPES)


def test_anls_and_normalisation():
    assert normalise_answer("  Red. ") == "red"
    assert normalise_answer("Light  Blue!") == "light blue"
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert anls("red", "red") == 1.0
    assert anls(" RED! ", "red") == 1.0
    assert anls("gren", "green") == pytest.approx(0.8)
    assert anls("ab", "ac") == 0.0  # normalised distance 0.5 reaches the threshold
    assert anls("abc", "abd") == pytest.approx(2 / 3)
    assert anls("blue", "red") == 0.0
    assert anls("", "red") == 0.0
    assert anls("", "") == 1.0
    assert anls("...", "") == 1.0  # punctuation only normalises to empty


def test_process_results():
    doc = {"answer": "red"}
    assert process_results(doc, [" Red."]) == {"exact_match": 1.0, "anls": 1.0}
    assert process_results(doc, ["blue"]) == {"exact_match": 0.0, "anls": 0.0}
    assert process_results(doc, ["rd"]) == {"exact_match": 0.0, "anls": pytest.approx(2 / 3)}
    assert process_results(doc, []) == {"exact_match": 0.0, "anls": 0.0}


def test_write_task_is_reproducible(tmp_path):
    splits = {"train": 8, "test": 6}
    first = write_task("synth_marker", tmp_path / "a", splits, seed=0)
    second = write_task("synth_marker", tmp_path / "b", splits, seed=0)
    other = write_task("synth_marker", tmp_path / "c", splits, seed=1)
    assert first["sha256"] == second["sha256"]
    assert first["sha256"]["test.parquet"] != other["sha256"]["test.parquet"]
    assert first["sha256"]["train.parquet"] != first["sha256"]["test.parquet"]

    out = tmp_path / "a"
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "synth_marker.yaml",
        "test.parquet",
        "train.parquet",
        "utils.py",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(first))
    assert (manifest["splits"] == splits and manifest["kind"] == "fine"
            and manifest["config"]["marker_size"] == SceneConfig().marker_size)
    assert tasks.sha256_file(out / "test.parquet") == manifest["sha256"]["test.parquet"]

    with pytest.raises(ValueError):
        write_task("synth_marker", tmp_path / "d", {"train": 8}, seed=0)


def test_cli(tmp_path, monkeypatch, capsys):
    argv = ["benchmarks", "--task", "synth_shape", "--out", str(tmp_path), "--train", "0", "--test", "4", "--seed", "2"]
    monkeypatch.setattr("sys.argv", argv)
    tasks.main()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["splits"] == {"test": 4} and manifest["seed"] == 2
    assert json.loads(capsys.readouterr().out)["splits"] == {"test": 4}


def test_task_names_do_not_clash_with_lmms_eval_builtins():
    """A built-in task of the same name would win over ours. Scanning the YAML text is much faster than
    letting TaskManager index the ~2000 built-in YAMLs."""
    builtin_dir = Path(importlib.util.find_spec("lmms_eval").origin).parent / "tasks"
    names = re.compile(r"\b(" + "|".join([*TASKS, "synth_vqa"]) + r")\b")
    yamls = list(builtin_dir.rglob("*.yaml"))
    assert len(yamls) > 100
    assert [str(path) for path in yamls if names.search(path.read_text(errors="ignore"))] == []


@pytest.fixture(scope="module")
def lmms_tasks(tmp_path_factory):
    """All three tasks written under one folder and indexed by lmms-eval's TaskManager."""
    root = tmp_path_factory.mktemp("lmms_tasks")
    for task in TASKS:
        write_task(task, root / task, {"train": 4, "test": 6}, seed=0)
    from lmms_eval.tasks import TaskManager

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets_cache")))
        yield root, TaskManager(include_path=[str(root)], include_defaults=False)


def test_lmms_eval_loads_the_tasks(lmms_tasks):
    from lmms_eval.tasks import get_task_dict

    root, task_manager = lmms_tasks
    for task in TASKS:
        assert task_manager.task_index[task]["yaml_path"] == str(root / task / f"{task}.yaml")
    assert sorted(task_manager.task_index["synth_vqa"]["task"]) == sorted(TASKS)

    task = get_task_dict(["synth_marker"], task_manager)["synth_marker"]
    assert task.config.generation_kwargs == {"until": ["\n"], "max_new_tokens": 4, "do_sample": False}
    expected = generate_split("synth_marker", "test", 6, seed=0)
    docs = task.test_docs()
    assert len(docs) == 6
    for doc, row in zip(docs, expected):
        assert doc["id"] == row["id"] and doc["answer"] == row["answer"]
        (image,) = task.doc_to_visual(doc)
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(row["image"]))
        assert task.doc_to_text(doc) == "What colour is the small square?"
        assert task.process_results(doc, [doc["answer"].upper() + "."]) == {"exact_match": 1.0, "anls": 1.0}
        assert task.process_results(doc, ["xxxxxxxx"]) == {"exact_match": 0.0, "anls": 0.0}


def test_lmms_eval_end_to_end(lmms_tasks, tmp_path, monkeypatch):
    """A model answering every other question correctly scores 0.5 on both metrics of every task."""
    import lmms_eval.evaluator
    from lmms_eval.api.model import lmms

    class HalfRight(lmms):
        is_simple = True

        def generate_until(self, requests):
            answers = []
            for request in requests:
                _, _, doc_to_visual, doc_id, task, split = request.args
                doc = self.task_dict[task][split][doc_id]
                assert doc_to_visual(doc)[0].mode == "RGB"
                answers.append(doc["answer"].capitalize() + "." if doc_id % 2 == 0 else "xxxxxxxx")
            return answers

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    monkeypatch.chdir(tmp_path)
    _, task_manager = lmms_tasks
    results = lmms_eval.evaluator.simple_evaluate(
        model=HalfRight(), tasks=["synth_vqa"], task_manager=task_manager, log_samples=False, bootstrap_iters=0
    )
    for task in TASKS:
        assert results["results"][task]["exact_match,none"] == pytest.approx(0.5)
        assert results["results"][task]["anls,none"] == pytest.approx(0.5)


def test_training_scenes_vary_the_marker_size_and_evaluation_scenes_do_not():
    config = SceneConfig()
    train = generate_split("synth_marker", "train", 60, seed=0, config=config)
    test = generate_split("synth_marker", "test", 30, seed=0, config=config)
    assert {row["marker_size"] for row in train} == set(config.train_marker_sizes)
    assert {row["marker_size"] for row in test} == {config.marker_size}
