"""The lmms-eval plugins, used through lmms-eval's own CLI and evaluator, and the checks on its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmms_plugins.args import model_args, model_args_string
from lmms_plugins.metrics import primary_metric
from lmms_plugins.run import (
    EvaluationFailed,
    TaskRun,
    check_outputs,
    logged_answer,
    run_lmms_eval,
    run_lmms_eval_tasks,
    sample_rows,
)
from visor_model.methods.base import tokens_for_budget


def test_entry_points_register_every_model_id():
    from lmms_eval.models import get_model

    for model_id, class_name in [("llava_full", "LlavaFull"), ("random_drop", "RandomDropLlava"),
                                 ("hired", "HiredLlava"), ("visionzip", "VisionZipLlava"),
                                 ("downsample", "DownsampleLlava"), ("visor", "VisorLlava"), ("fastv", "FastVLlava"),
                                 ("prumerge", "PruMergeLlava")]:
        assert get_model(model_id).__name__ == class_name


def test_plugins_override_the_init_hooks_not_init():
    from lmms_plugins.fastv import FastVLlava
    from lmms_plugins.models import EfficientLlava
    from lmms_plugins.visor import VisorLlava

    assert "__init__" not in VisorLlava.__dict__ and "__init__" not in FastVLlava.__dict__
    assert {"check_args", "load_model", "build_runner", "label"} <= set(VisorLlava.__dict__)
    assert {"check_args", "build_runner", "label", "build_accountant"} <= set(FastVLlava.__dict__)
    assert all(callable(getattr(EfficientLlava, hook)) for hook in ("check_args", "load_model", "build_runner"))


def test_model_args_are_the_resolved_checkpoint_device_dtype_then_the_setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evaluation = {"device": "cpu", "dtype": "bfloat16", "batch_size": 4, "limit": None}
    args = model_args("ckpt", {"sa_layers": 2, "token_budget": 0.2}, evaluation)
    assert args == {"pretrained": str(tmp_path.resolve() / "ckpt"), "device": "cpu", "dtype": "bfloat16",
                    "sa_layers": 2, "token_budget": 0.2}
    assert list(args) == ["pretrained", "device", "dtype", "sa_layers", "token_budget"]
    assert model_args_string(args) == (f"pretrained={tmp_path.resolve() / 'ckpt'},device=cpu,dtype=bfloat16,"
                                       "sa_layers=2,token_budget=0.2")
    assert model_args("ckpt", {"dtype": "float32"}, evaluation)["dtype"] == "float32"  # the setting wins


def stock_cli(model: str, model_args: dict, task_dir, out, log, batch_size: int = 1) -> int:
    """`python -m lmms_eval` as a user types it, with the plugin's task folder as --include_path."""
    command = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args",
               ",".join(f"{k}={v}" for k, v in model_args.items()), "--tasks", "synth_marker", "--include_path",
               str(task_dir), "--batch_size", str(batch_size), "--output_path", str(out), "--log_samples"]
    with open(log, "w") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=600,
                              env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")).returncode


@pytest.fixture(scope="module")
def cli_runs(tiny_checkpoint, task_dir, tmp_path_factory):
    """llava_full at batch size 1 through the stock lmms-eval CLI; llava_full at batch size 4 and random_drop at
    20% through `run_lmms_eval` (lmms-eval's evaluator in this process)."""
    out = tmp_path_factory.mktemp("lmms")
    assert stock_cli("llava_full", {"pretrained": tiny_checkpoint, "device": "cpu"}, task_dir, out / "full_b1",
                     out / "full_b1.log") == 0
    runs = {"full_b1": check_outputs(out / "full_b1", "synth_marker", out / "full_b1.log", 8, 1.0)}
    for name, model, args, batch_size in [("full_b4", "llava_full", {}, 4),
                                          ("drop", "random_drop", {"budget": 0.2, "seed": 0}, 4)]:
        runs[name] = run_lmms_eval(
            model, {"pretrained": str(tiny_checkpoint), "device": "cpu", **args}, "synth_marker", out / name,
            out / f"{name}.log", include_path=task_dir, batch_size=batch_size, expected_samples=8,
            max_empty_fraction=1.0,
        )
    return runs


@pytest.mark.slow
def test_cli_writes_results_and_per_sample_logs(cli_runs):
    full = cli_runs["full_b1"]
    assert set(full.results["results"]["synth_marker"]) >= {"exact_match,none", "anls,none"}
    assert len(full.samples) == 8
    counts = full.samples[0]["token_counts"][0]
    assert counts["visual_tokens"] == counts["visual_tokens_kept"] > 0
    assert full.results["throughput"]["avg_visual_tokens_kept"] > 0


@pytest.mark.slow
def test_sample_scores_and_the_primary_metric_of_a_real_evaluation(cli_runs):
    """The synthetic task's primary metric (exact_match, the default): each sample's score is what lmms-eval
    logged, and metric_value is lmms-eval's aggregate in points."""
    run = cli_runs["full_b4"]
    rows = sample_rows(run.samples)
    assert [row["score"] for row in rows] == [float(sample["exact_match"]) for sample in run.samples]
    task_results = run.results["results"]["synth_marker"]
    primary = primary_metric("exact_match", task_results)
    assert primary["value"] == 100 * task_results["exact_match,none"] == 100 * sum(r["score"] for r in rows) / 8
    assert primary["scale"] == "0-100" and primary["mean"]


@pytest.mark.slow
def test_in_process_evaluator_writes_what_the_cli_writes(cli_runs):
    cli, in_process = cli_runs["full_b1"], cli_runs["full_b4"]
    assert in_process.results_path.name.endswith("_results.json")
    assert in_process.samples_path.name.endswith("_samples_synth_marker.jsonl")
    assert in_process.results["results"]["synth_marker"] == cli.results["results"]["synth_marker"]
    assert [s["doc_id"] for s in in_process.samples] == [s["doc_id"] for s in cli.samples]


@pytest.mark.slow
def test_batching_does_not_change_greedy_answers(cli_runs):
    answers = [[logged_answer(s) for s in cli_runs[name].samples] for name in ("full_b1", "full_b4")]
    assert answers[0] == answers[1]


@pytest.mark.slow
def test_random_drop_reports_kept_tokens_per_sample(cli_runs):
    for sample in cli_runs["drop"].samples:
        counts = sample["token_counts"][0]
        assert counts["visual_tokens_kept"] == tokens_for_budget(0.2, counts["visual_tokens"])


@pytest.mark.slow
@pytest.mark.parametrize("model, args", [("visionzip", {"budget": 0.2}), ("downsample", {"mode": "base_only"}),
                                         ("downsample", {"mode": "scale", "budget": 0.5})],
                         ids=["visionzip", "downsample-base_only", "downsample-budget"])
def test_visionzip_and_downsample_through_the_evaluator(tiny_checkpoint, task_dir, tmp_path, model, args):
    """lmms-eval's evaluator with each plugin: the task's metrics, and per sample the kept tokens and FLOPs."""
    run = run_lmms_eval(model, {"pretrained": str(tiny_checkpoint), "device": "cpu", **args}, "synth_marker",
                        tmp_path / "out", tmp_path / "log", include_path=task_dir, batch_size=4, expected_samples=8,
                        max_empty_fraction=1.0)
    assert "exact_match,none" in run.results["results"]["synth_marker"]
    for sample in run.samples:
        counts = sample["token_counts"][0]
        assert counts["flops_total"] > counts["flops_llm_prefill"] > 0
        if model == "visionzip":
            assert counts["visual_tokens_kept"] == tokens_for_budget(0.2, counts["visual_tokens"])
            assert counts["flops_selection"] > 0
        elif args["mode"] == "base_only":
            assert counts["crops"] == 1 and counts["visual_tokens_kept"] == 36 and counts["newline_tokens_kept"] == 1
        else:
            assert counts["visual_tokens_kept"] <= counts["visual_tokens"] and 0 < counts["input_scale"] <= 1


@pytest.mark.slow
def test_a_failed_cli_run_is_caught_although_the_cli_exits_zero(task_dir, tmp_path):
    assert stock_cli("llava_full", {"pretrained": tmp_path / "missing"}, task_dir, tmp_path / "out",
                     tmp_path / "log") == 0
    with pytest.raises(EvaluationFailed, match="wrote no results file for synth_marker.*last error: .*does not exist"):
        check_outputs(tmp_path / "out", "synth_marker", tmp_path / "log", 8, 0.05)


def test_missing_checkpoint_fails_the_evaluation_with_its_message(task_dir, tmp_path):
    with pytest.raises(EvaluationFailed, match="lmms-eval failed for llava_full on synth_marker: .*does not exist"):
        run_lmms_eval("llava_full", {"pretrained": str(tmp_path / "missing")}, "synth_marker", tmp_path / "out",
                      tmp_path / "log", include_path=task_dir)
    assert "Traceback" in (tmp_path / "log").read_text()
    assert not any(tmp_path.rglob("*_results.json"))


def test_bad_budget_fails_with_its_message(next_checkpoint, task_dir, tmp_path):
    with pytest.raises(EvaluationFailed, match=r"random_drop on synth_marker: .*budget must be in \(0, 1\], got 1.5"):
        run_lmms_eval("random_drop", {"pretrained": str(next_checkpoint), "budget": 1.5}, "synth_marker",
                      tmp_path / "out", tmp_path / "log", include_path=task_dir)


@pytest.mark.slow
def test_empty_answers_above_the_threshold_fail(cli_runs, tmp_path):
    run = cli_runs["full_b1"]
    swallowed = [dict(s, filtered_resps="", token_counts=[None]) for s in run.samples]  # a wrapper's silent error
    answered_empty = [dict(s, filtered_resps="") for s in run.samples]  # the model's own empty answers
    out = tmp_path / "model"
    out.mkdir()
    (out / "x_results.json").write_text(json.dumps(run.results))
    samples_log = out / "x_samples_synth_marker.jsonl"
    samples_log.write_text("\n".join(json.dumps(s) for s in answered_empty))
    assert len(check_outputs(tmp_path, "synth_marker", tmp_path / "log", 8, max_empty_fraction=0.05).samples) == 8
    samples_log.write_text("\n".join(json.dumps(s) for s in swallowed))
    with pytest.raises(EvaluationFailed, match="8 of 8 answers are empty"):
        check_outputs(tmp_path, "synth_marker", tmp_path / "log", 8, max_empty_fraction=0.05)
    with pytest.raises(EvaluationFailed, match="expected 9 samples"):
        check_outputs(tmp_path, "synth_marker", tmp_path / "log", 9, max_empty_fraction=1.0)


def test_unknown_task_fails_with_the_task_name(next_checkpoint, task_dir, tmp_path):
    with pytest.raises(EvaluationFailed,
                       match=f"unknown lmms-eval task 'synth_nope': no task of that name in {task_dir}"):
        run_lmms_eval("llava_full", {"pretrained": str(next_checkpoint)}, "synth_nope", tmp_path / "out",
                      tmp_path / "log", include_path=task_dir)


def test_corrupt_benchmark_parquet_fails_the_job(next_checkpoint, task_dir, tmp_path):
    import shutil

    broken = tmp_path / "synth_marker"
    shutil.copytree(task_dir, broken)
    (broken / "test.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(EvaluationFailed, match="lmms-eval failed for llava_full on synth_marker: "):
        run_lmms_eval("llava_full", {"pretrained": str(next_checkpoint)}, "synth_marker", tmp_path / "out",
                      tmp_path / "log", include_path=broken)


# --------------------------------------------------------------------------------------------------------
# several tasks in one run (the workflow's evaluate job: one model load for all its benchmarks)
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def more_tasks(tmp_path_factory):
    """A synth_shape task folder, and a second synth_marker folder (other documents, same task name)."""
    from visor_model.reference import tasks

    root = tmp_path_factory.mktemp("more_tasks")
    tasks.write_task("synth_shape", root / "synth_shape", {"test": 8}, seed=1)
    tasks.write_task("synth_marker", root / "other" / "synth_marker", {"test": 4}, seed=2)
    return {"synth_shape": root / "synth_shape", "other_marker": root / "other" / "synth_marker"}


@pytest.mark.slow
def test_tasks_of_one_run_give_what_each_gives_alone(next_checkpoint, task_dir, more_tasks, tmp_path):
    """Three tasks in one run (two of them named synth_marker, from two folders) write and check what three
    single-task runs do: the same answers, token counts, metrics and throughput, each in its own folder."""
    args = {"pretrained": str(next_checkpoint), "device": "cpu"}
    folders = [("synth_marker", task_dir, 8), ("synth_shape", more_tasks["synth_shape"], 8),
               ("synth_marker", more_tasks["other_marker"], 4)]
    runs = [TaskRun(task, tmp_path / "together" / str(i), folder, n) for i, (task, folder, n) in enumerate(folders)]
    together = run_lmms_eval_tasks("llava_full", args, runs, tmp_path / "together.log", batch_size=4)
    alone = [run_lmms_eval("llava_full", args, task, tmp_path / "alone" / str(i), tmp_path / f"alone{i}.log",
                           include_path=folder, batch_size=4, expected_samples=n)
             for i, (task, folder, n) in enumerate(folders)]
    for run, joint, single in zip(runs, together, alone, strict=True):
        assert joint.results_path.is_relative_to(run.output_dir) and len(joint.samples) == run.expected_samples
        assert list(joint.results["results"]) == [run.task]
        assert joint.results["results"] == single.results["results"]
        assert joint.results["config"]["model"] == single.results["config"]["model"] == "llava_full"
        assert [(logged_answer(s), s["token_counts"]) for s in joint.samples] == [
            (logged_answer(s), s["token_counts"]) for s in single.samples]
        timing = ("total_elapsed_time", "avg_speed")
        assert ({k: v for k, v in joint.results["throughput"].items() if k not in timing}
                == {k: v for k, v in single.results["throughput"].items() if k not in timing})
    assert [s["doc_id"] for s in together[2].samples] == [0, 1, 2, 3]  # the second folder's synth_marker
    log = (tmp_path / "together.log").read_text()
    assert [line.split(" --tasks ")[1].split()[0] for line in log.splitlines()
            if line.startswith("lmms-eval evaluator:")] == ["synth_marker", "synth_shape", "synth_marker"]


@pytest.mark.slow
def test_a_task_that_fails_its_check_fails_the_run_naming_it(next_checkpoint, task_dir, more_tasks, tmp_path):
    runs = [TaskRun("synth_marker", tmp_path / "a", task_dir, 8),
            TaskRun("synth_shape", tmp_path / "b", more_tasks["synth_shape"], 9),
            TaskRun("synth_marker", tmp_path / "c", task_dir, 8)]
    with pytest.raises(EvaluationFailed, match="^synth_shape: expected 9 samples, lmms-eval logged 8$"):
        run_lmms_eval_tasks("llava_full", {"pretrained": str(next_checkpoint), "device": "cpu"}, runs,
                            tmp_path / "log", batch_size=4)
    assert any((tmp_path / "a").rglob("*_results.json")) and not (tmp_path / "c").exists()  # stopped there


def test_an_unknown_task_fails_the_run_before_the_model_loads(task_dir, tmp_path):
    runs = [TaskRun("synth_marker", tmp_path / "a", task_dir), TaskRun("synth_nope", tmp_path / "b", task_dir)]
    with pytest.raises(EvaluationFailed, match=f"unknown lmms-eval task 'synth_nope': no task of that name in "
                                               f"{task_dir}"):
        run_lmms_eval_tasks("llava_full", {"pretrained": str(tmp_path / "missing")}, runs, tmp_path / "log")


def test_a_model_that_does_not_load_fails_the_run_naming_its_tasks(task_dir, more_tasks, tmp_path):
    runs = [TaskRun("synth_marker", tmp_path / "a", task_dir),
            TaskRun("synth_shape", tmp_path / "b", more_tasks["synth_shape"])]
    with pytest.raises(EvaluationFailed,
                       match="lmms-eval failed for llava_full on synth_marker, synth_shape: .*does not exist"):
        run_lmms_eval_tasks("llava_full", {"pretrained": str(tmp_path / "missing")}, runs, tmp_path / "log")


# --------------------------------------------------------------------------------------------------------
# documents that cannot be answered
# --------------------------------------------------------------------------------------------------------


def odd_task(task_dir, folder, edits: dict) -> str:
    """A copy of the synth_marker task folder whose test documents `edits` (doc id -> column values) replace."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(task_dir, folder)
    table = pq.read_table(folder / "test.parquet")
    rows = table.to_pylist()
    for doc_id, values in edits.items():
        rows[doc_id].update(values)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), folder / "test.parquet")
    return folder


EMPTY_QUESTION = {"question": "  "}
CORRUPT_IMAGE = {"image": {"bytes": b"these bytes are no image", "path": None}}
MISSING_IMAGE = {"image": None}


def skipped_reason(sample: dict) -> str | None:
    return sample["token_counts"][0].get("skipped_reason")


@pytest.mark.slow
def test_odd_documents_get_empty_answers_with_their_reasons(next_checkpoint, task_dir, tmp_path):
    folder = odd_task(task_dir, tmp_path / "synth_marker", {2: EMPTY_QUESTION, 5: CORRUPT_IMAGE})
    run = run_lmms_eval("llava_full", {"pretrained": str(next_checkpoint), "device": "cpu"}, "synth_marker",
                        tmp_path / "out", tmp_path / "log", include_path=folder, batch_size=4, expected_samples=8,
                        max_empty_fraction=0.25)
    by_doc = {sample["doc_id"]: sample for sample in run.samples}
    assert by_doc[2]["token_counts"] == [{"skipped_reason": "the question is empty"}]  # no counts, no FLOPs
    assert logged_answer(by_doc[2]) == logged_answer(by_doc[5]) == ""
    assert skipped_reason(by_doc[5]).startswith("its image cannot be loaded: UnidentifiedImageError: cannot identify")
    for doc_id in (0, 1, 3, 4, 6, 7):
        counts = by_doc[doc_id]["token_counts"][0]
        assert "skipped_reason" not in counts and counts["flops_total"] > 0 and counts["output_tokens"] is not None
    assert run.results["throughput"]["avg_skipped_samples"] == 2
    assert set(run.results["results"]["synth_marker"]) >= {"exact_match,none", "anls,none"}
    accepted = [line for line in (tmp_path / "log").read_text().splitlines() if "answers are empty" in line]
    assert accepted == [f"synth_marker: 2 of 8 answers are empty (at most 25%, accepted): doc 2 (the question is "
                        f"empty); doc 5 ({skipped_reason(by_doc[5])})"]


@pytest.mark.slow
def test_too_many_odd_documents_fail_the_job_naming_them(next_checkpoint, task_dir, tmp_path):
    folder = odd_task(task_dir, tmp_path / "synth_marker", {2: EMPTY_QUESTION, 5: CORRUPT_IMAGE, 6: MISSING_IMAGE})
    with pytest.raises(EvaluationFailed) as failure:
        run_lmms_eval("llava_full", {"pretrained": str(next_checkpoint), "device": "cpu"}, "synth_marker",
                      tmp_path / "out", tmp_path / "log", include_path=folder, batch_size=4, expected_samples=8,
                      max_empty_fraction=0.25)
    message = str(failure.value)
    assert message.startswith("synth_marker: 3 of 8 answers are empty (more than 25%): doc 2 (the question is "
                              "empty); doc 5 (its image cannot be loaded: UnidentifiedImageError: cannot identify")
    missing = "doc 6 (its image cannot be loaded: AttributeError: 'NoneType' object has no attribute 'convert')"
    assert f"; {missing}; lmms-eval wrappers turn generation errors into empty answers, see " in message


def test_unanswered_documents_are_grouped_by_reason():
    from lmms_plugins.run import unanswered_documents

    samples = [{"doc_id": i, "token_counts": [{"skipped_reason": "the question is empty"}]} for i in range(23)]
    samples += [{"doc_id": 30, "token_counts": [None]}, {"doc_id": 31, "token_counts": []}]
    assert unanswered_documents(samples) == (
        "doc " + ", ".join(str(i) for i in range(20)) + " and 3 more (the question is empty); "
        "doc 30, 31 (no reason logged)")


def test_check_outputs_reads_the_trackers_results_not_a_tasks_submission(tmp_path):
    """MMBench's aggregation writes submissions/<task>_results.json beside the tracker's files."""
    import json

    from lmms_plugins.run import check_outputs

    tracker = tmp_path / "model" / "20261201_000000_results.json"
    tracker.parent.mkdir()
    tracker.write_text(json.dumps({"results": {"t": {"exact_match,none": 1.0}}}))
    sample = {"doc_id": 0, "filtered_resps": "a", "token_counts": [{"output_tokens": 1}]}
    (tracker.parent / "20261201_000000_samples_t.jsonl").write_text(json.dumps(sample) + "\n")
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submissions" / "t_results.json").write_text(json.dumps({"not": "lmms-eval's results"}))
    output = check_outputs(tmp_path, "t", tmp_path / "log", expected_samples=1, max_empty_fraction=0.0)
    assert output.results_path == tracker and output.results["results"]["t"] == {"exact_match,none": 1.0}


@pytest.fixture(scope="module")
def plugin(next_checkpoint):
    from lmms_plugins.models import LlavaFull

    return LlavaFull(pretrained=str(next_checkpoint), device="cpu", batch_size=3)


def requests_for(plugin, docs: list[dict]):
    """lmms-eval Instances of a task "odd" whose documents hold a question and a function returning the visuals."""
    from lmms_eval.api.instance import Instance

    plugin.task_dict = {"odd": {"test": docs}}
    return [Instance(request_type="generate_until", idx=0, metadata={"task": "odd", "doc_id": i, "repeats": 1},
                     arguments=(doc["question"], {"max_new_tokens": 3, "until": ["\n"]}, lambda doc: doc["visuals"](),
                                i, "odd", "test"))
            for i, doc in enumerate(docs)]


def test_answers_carry_no_control_characters(plugin, monkeypatch):
    """A byte-level tokenizer can decode C0 control characters; MMBench's aggregation writes answers to a
    spreadsheet, which refuses them."""
    from conftest import noise_images

    monkeypatch.setattr(plugin.runner, "decode_text", lambda ids: "a\x01b\x1fc\td")
    [image] = noise_images([(60, 100)])
    [result] = plugin.generate_until(requests_for(plugin, [{"question": "q", "visuals": lambda: [image]}]))
    assert result.text == "abc\td"


def test_generate_until_sets_aside_what_it_cannot_answer(plugin, monkeypatch):
    """Reasons per kind of odd document; the others are answered as in a run without the odd ones (batches of 3:
    the rejected image's batch is rerun sample by sample)."""
    from conftest import noise_images

    def doc(question, *visuals):
        return {"question": question, "visuals": lambda: list(visuals)}

    def undecodable():
        raise OSError("image file is truncated")

    images = noise_images([(60, 100), (96, 96), (40, 80), (50, 50), (13, 17)])
    good = [doc("what colour is the square", image) for image in images[:4]]
    without_odd = plugin.generate_until(requests_for(plugin, good))

    process_images = plugin.runner.process_images

    def rejecting(batch):
        if any(image.size == (17, 13) for image in batch):
            raise ValueError("unsupported image")
        return process_images(batch)

    monkeypatch.setattr(plugin.runner, "process_images", rejecting)
    docs = [good[0], doc(" \n", images[1]), good[1], doc("what", images[2], images[2]), good[2], doc("what", None),
            doc("what", images[4]), {"question": "what", "visuals": undecodable}, good[3]]
    results = plugin.generate_until(requests_for(plugin, docs))
    entries = [result.token_counts.to_dict() for result in results]
    reasons = {i: entry for i, entry in enumerate(entries) if "skipped_reason" in entry}
    assert reasons == {  # the whole log entry: no token counts, no FLOPs
        1: {"skipped_reason": "the question is empty"},
        3: {"skipped_reason": "expected exactly one image, got 2"},
        5: {"skipped_reason": "expected exactly one image, got 0"},
        6: {"skipped_reason": "the model cannot take it: ValueError: unsupported image"},
        7: {"skipped_reason": "its image cannot be loaded: OSError: image file is truncated"},
    }
    assert all(results[i].text == "" for i in reasons)
    answered = [results[i] for i in (0, 2, 4, 8)]
    assert [r.text for r in answered] == [r.text for r in without_odd]
    assert [r.token_counts.to_dict() for r in answered] == [r.token_counts.to_dict() for r in without_odd]
