"""Latency measurement (visor_model.efficiency.latency: every setting of a model side by side, interleaved repeats;
lmms_plugins.latency: the plugins, sharing loaded checkpoints; the latency table's paired statistics and the
latency claims) and the speed benchmark (visor_model.efficiency.speed_bench) at toy size: the structure of their
outputs, never timing targets, but for one invariant: identical computations measured side by side time alike."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

from lmms_plugins.args import model_args
from lmms_plugins.latency import SharedPlugins
from visor_model.audit.claims import Tables
from visor_model.audit.claims.computations import decode_share_of_prefill_gain, latency_ratio, memory_saving
from visor_model.audit.tables import latency_table
from visor_model.efficiency.accounting import FlopAccountant
from visor_model.efficiency.latency import (
    LatencyConfig,
    RssSampler,
    TimedSetting,
    fixed_inputs,
    measure_latency,
    stats,
)
from visor_model.efficiency.speed_bench import (
    ARCHITECTURES,
    Architecture,
    main,
    markdown,
    peak_tflops,
    run_bench,
)
from visor_model.llava.runner import VisionLanguageRunner
from visor_model.methods.base import FullTokens
from visor_model.methods.hired import HiRED
from visor_model.methods.visor.modeling import VisorConfig, VisorModel
from visor_model.methods.visor.runner import VisorRunner
from visor_model.reference.models import build_reference_model
from visor_model.stats import median_interval

REPO = Path(__file__).resolve().parent.parent
CONFIG = LatencyConfig(samples=2, warmup=1, repeats=2, max_new_tokens=3, threads=1)


@pytest.fixture(scope="module")
def loaded(benchmark_tokenizer):
    model, processor = build_reference_model(dataclasses.replace(tiny_config("llava_onevision"), text_layers=3),
                                             benchmark_tokenizer, seed=0)
    return SimpleNamespace(model=model.eval(), tokenizer=benchmark_tokenizer, image_processor=processor)


def test_fixed_inputs_are_deterministic():
    a, b = fixed_inputs(4, seed=0), fixed_inputs(4, seed=0)
    assert [q for _, q in a] == [q for _, q in b] and len({q for _, q in a}) == 3  # cycles over the tasks
    assert all(x.tobytes() == y.tobytes() for (x, _), (y, _) in zip(a, b))
    assert fixed_inputs(2, image_size=(40, 60))[0][0].size == (60, 40)


def check_setting(record, config):
    assert set(record["timings"]) == {"prefill_s", "decode_per_token_s", "generate_s", "preprocess_s"}
    n = config.samples * config.repeats
    assert record["timings"]["prefill_s"]["n"] == n
    assert record["timings"]["decode_per_token_s"]["n"] == n * (config.max_new_tokens - 1)
    for name, s in record["timings"].items():
        assert s["q25"] <= s["q75"] and s["iqr"] >= 0 and s["median"] > 0, name
        if name != "preprocess_s":
            assert len(s["per_repeat"]) == config.repeats and s["median"] == pytest.approx(np.median(s["per_repeat"]))
    memory = record["memory"]
    assert memory["method"] and memory["weights_mb"] > 0 and len(memory["per_repeat_peak_mb"]) == config.repeats
    assert all(d >= 0 for d in memory["per_repeat_delta_mb"])
    assert memory["peak_mb"] == pytest.approx(memory["weights_mb"] + np.median(memory["per_repeat_delta_mb"]))
    assert len(record["flops"]["per_sample"]) == config.samples == len(record["samples"])
    mean = record["flops"]["mean"]
    assert mean["flops_prefill"] >= mean["flops_llm_prefill"] > 0 and mean["flops_llm_decode"] > 0


def check_run(record, config, n_settings):
    assert record["environment"]["device"] and record["environment"]["versions"]["torch"]
    assert record["config"]["dtype"] == "float32" and record["config"]["device"] == "cpu"
    orders = record["schedule"]["orders"]
    assert len(orders) == config.repeats * config.samples
    assert all(sorted(order) == list(range(n_settings)) for order in orders)  # every setting once per slot
    assert len(record["settings"]) == n_settings
    json.dumps(record)  # serialisable as it is


def test_measure_latency_times_host_methods_side_by_side(loaded):
    hired = HiRED(0.3, model=loaded.model)
    settings = [TimedSetting(name, VisionLanguageRunner(loaded, reducer),
                             FlopAccountant.for_model(loaded.model, reducer))
                for name, reducer in (("full", FullTokens()), ("hired", hired))]
    config = dataclasses.replace(CONFIG, repeats=3)
    record = measure_latency(settings, fixed_inputs(2), config)
    check_run(record, config, 2)
    full, hired_record = record["settings"]
    for entry in (full, hired_record):
        check_setting(entry, config)
    assert (full["name"], full["label"], hired_record["label"]) == ("full", "full", hired.name)
    assert full["flops"]["mean"]["flops_selection"] == 0 < hired_record["flops"]["mean"]["flops_selection"]
    assert hired_record["memory"]["weights_mb"] == full["memory"]["weights_mb"]  # one model, its weights once each
    # a seeded schedule: the same orders again, and not always the same one
    assert len({tuple(order) for order in record["schedule"]["orders"]}) == 2
    assert measure_latency(settings, fixed_inputs(2), config)["schedule"]["orders"] == record["schedule"]["orders"]
    with pytest.raises(ValueError, match="unique names"):
        measure_latency([settings[0], settings[0]], fixed_inputs(2), config)


def test_measure_latency_of_visor_policy(loaded):
    visor = VisorModel(loaded.model, VisorConfig(n_layers=3))  # CA (0,), SA candidate (1,), router at 1
    visor.set_viable(visor.config.family())
    runner = VisorRunner(loaded, visor, threshold=0.5)
    setting = TimedSetting("visor/threshold-0.5", runner, FlopAccountant.for_model(loaded.model, None, visor),
                           label="visor[tau=0.5]")
    record = measure_latency([setting], fixed_inputs(2), CONFIG)
    check_run(record, CONFIG, 1)
    [entry] = record["settings"]
    check_setting(entry, CONFIG)
    assert entry["label"] == "visor[tau=0.5]" and runner.reducer.name == "full"
    assert all(s["roles"][0] == "ca" for s in entry["samples"])
    assert entry["flops"]["mean"]["flops_llm_prefill_router"] > 0
    # VISOR's modules count towards its weights, the host's tensors once
    host = sum(t.numel() * t.element_size() for t in [*loaded.model.parameters(), *loaded.model.buffers()])
    assert entry["memory"]["weights_mb"] * 2**20 > host


def test_median_interval_is_the_sign_test_interval():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0]  # n = 6: P(B <= 0) = 1/64 <= 0.025 < P(B <= 1): [x_(1), x_(6)]
    assert median_interval(values) == (3.5, 1.0, 6.0)
    ten = list(range(10, 0, -1))  # n = 10: P(B <= 1) = 11/1024 <= 0.025 < P(B <= 2) = 56/1024: [x_(2), x_(9)]
    assert median_interval(ten) == (5.5, 2.0, 9.0)
    median, low, high = median_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # n = 5: no 95% interval exists
    assert median == 3.0 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in median_interval([1.0, float("inf")] * 4))


def test_stats_and_rss_sampler():
    s = stats([1.0, 2.0, 3.0, 4.0])
    assert s["median"] == 2.5 and s["iqr"] == 1.5 and s["n"] == 4
    assert math.isnan(stats([])["median"])
    if RssSampler.available():
        with RssSampler() as sampler:
            # above glibc's largest mmap threshold (32 MiB): fresh pages, not ones the allocator already holds
            block = bytearray(96 << 20)
            block[::4096] = b"x" * len(block[::4096])  # touch the pages
        assert sampler.peak - sampler.before >= 64 << 20


def latency_entry(method, prefill, decode, peak, flops, setting_id="default"):
    """A setting of a latency record with the given per-repeat values (lists)."""
    def timing(values):
        median, low, high = median_interval(values)
        return {"median": median, "ci_low": low, "ci_high": high, "per_repeat": list(values), "q25": min(values),
                "q75": max(values), "iqr": max(values) - min(values), "n": 2 * len(values)}

    return {"name": f"{method}/{setting_id}", "label": method, "method": method, "setting_id": setting_id,
            "setting": {}, "timings": {"prefill_s": timing(prefill), "decode_per_token_s": timing(decode),
                                       "generate_s": timing([p + 3 * d for p, d in zip(prefill, decode)])},
            "memory": {"method": "x", "weights_mb": 1.0, "peak_mb": float(np.median(peak)), "ci_low": min(peak),
                       "ci_high": max(peak), "delta_mb": float(np.median(peak)) - 1.0, "per_repeat_peak_mb": peak},
            "flops": {"mean": {"flops_llm_prefill": flops, "flops_total": 2 * flops, "flops_prefill": 1.5 * flops}}}


def latency_record(*settings, model="m"):
    return {"model": model, "settings": list(settings),
            "environment": {"device": "cpu", "versions": {}, "lock": {"sha256": "0" * 64}, "torch_threads": 2},
            "config": {"samples": 2, "repeats": len(settings[0]["timings"]["prefill_s"]["per_repeat"]), "warmup": 1,
                       "max_new_tokens": 4, "dtype": "float32"}}


def test_latency_table_pairs_the_repeats_against_llava_full():
    # the machine slows down over the run (repeat r: 1 + r / 10) and both settings with it
    drift = 1 + np.arange(8) / 10
    full = latency_entry("llava_full", list(0.2 * drift), list(0.010 * drift), [100.0] * 8, 100.0)
    prefill = 0.1 * drift * np.array([1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0, 1.0])
    drop = latency_entry("random_drop", list(prefill), list(0.008 * drift), [90.0, 91, 89, 90, 90, 92, 90, 88], 25.0)
    table = latency_table([latency_record(full, drop)])
    row = table.set_index("method").loc["random_drop"]
    ratios = 0.2 * drift / prefill
    assert row["prefill_speedup"] == pytest.approx(np.median(ratios))
    assert (row["prefill_speedup_ci_low"], row["prefill_speedup_ci_high"]) == pytest.approx(
        (np.sort(ratios)[0], np.sort(ratios)[-1]))  # n = 8: [x_(1), x_(8)]
    # paired, the drift cancels: a CI around 2 from 1.96 to 2.04, where unpaired medians would spread 1.4x-2.8x
    assert 1.9 < row["prefill_speedup_ci_low"] < 2 < row["prefill_speedup_ci_high"] < 2.1
    assert row["decode_speedup"] == pytest.approx(1.25) and row["decode_speedup_ci_low"] == pytest.approx(1.25)
    assert row["decode_share_of_prefill_gain"] == pytest.approx(np.median(0.25 / (ratios - 1)))
    assert row["memory_saving_mb"] == pytest.approx(10.0)
    assert row["llm_prefill_flop_ratio"] == pytest.approx(0.25) and row["prefill_flop_ratio"] == pytest.approx(0.25)
    assert row["prefill_realised_share"] == pytest.approx(0.25 * row["prefill_speedup"])
    base = table.set_index("method").loc["llava_full"]
    assert base["prefill_speedup"] == 1.0 == base["prefill_speedup_ci_low"] and base["memory_saving_mb"] == 0
    with pytest.raises(ValueError, match="two latency records of model m"):
        latency_table([latency_record(full), latency_record(drop)])
    with pytest.raises(ValueError, match="2 llava_full settings"):
        latency_table([latency_record(full, dict(full, setting_id="again"))])
    alone = latency_table([latency_record(drop)]).iloc[0]
    assert math.isnan(alone["prefill_speedup"]) and math.isnan(alone["prefill_speedup_ci_low"])


def test_latency_claims_use_the_ci_of_the_repeats():
    drift = 1 + np.arange(8) / 10
    full = latency_entry("llava_full", list(0.2 * drift), list(0.010 * drift), [100.0] * 8, 100.0)
    prefill = 0.1 * drift * np.array([1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0, 1.0])
    drop = latency_entry("random_drop", list(prefill), list(0.008 * drift), [90.0, 91, 89, 90, 90, 92, 90, 88], 25.0)
    latency = latency_table([latency_record(full, drop)]).assign(family="llava_next")
    tables = Tables(pd.DataFrame(), pd.DataFrame(), latency)
    row = latency.set_index("method").loc["random_drop"]
    speedup = latency_ratio(tables, "llava_next", "random_drop")
    assert (speedup.value, speedup.ci_low, speedup.ci_high) == pytest.approx(
        (row["prefill_speedup"], row["prefill_speedup_ci_low"], row["prefill_speedup_ci_high"]))
    reduction = latency_ratio(tables, "llava_next", "random_drop", form="reduction_percent")
    assert reduction.ci_low == pytest.approx(100 * (1 - 1 / speedup.ci_low)) and reduction.value == pytest.approx(
        100 * (1 - 1 / speedup.value))
    generate = latency_ratio(tables, "llava_next", "random_drop", timing="generate_s")
    assert generate.ci_low <= generate.value <= generate.ci_high and generate.value == row["generate_speedup"]
    share = decode_share_of_prefill_gain(tables, "llava_next", "random_drop")
    assert share.ci_low <= share.value == row["decode_share_of_prefill_gain"] <= share.ci_high
    saving = memory_saving(tables, "llava_next", "random_drop")
    assert (saving.value, saving.ci_low, saving.ci_high) == pytest.approx((10 / 1024, 8 / 1024, 12 / 1024))
    with pytest.raises(ValueError, match="timing must be one of"):
        latency_ratio(tables, "llava_next", "random_drop", timing="ttft")


def test_shared_plugins_load_each_checkpoint_once_and_refuse_a_changed_model(next_checkpoint):
    evaluation = {"device": "cpu", "dtype": "float32"}
    built = SharedPlugins([(method, model_args(next_checkpoint, setting, evaluation)) for method, setting in (
        ("llava_full", {}), ("random_drop", {"budget": 0.5, "seed": 0}), ("hired", {"budget": 0.5}))])
    full, drop, hired = built.plugins
    assert full.checkpoint is drop.checkpoint is hired.checkpoint  # one model for the three settings
    assert type(drop).__name__ == "RandomDropLlava" and drop.reducer.budget == 0.5 and hired.label.startswith("hired")
    built.check()  # unchanged
    handle = full.runner.model.lm_head.register_forward_hook(lambda *args: None)
    try:
        with pytest.raises(RuntimeError, match="the model of llava_full .* changed after it was built"):
            built.check()
    finally:
        handle.remove()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (CUDA events, the allocator's peak memory)"))])
def test_identical_computations_measure_alike_side_by_side(device):
    """llava_full, random_drop at budget 1.0 and HiRED (paper mode) at budget 1.0 feed the LLM the same tokens
    (bit for bit: tests/test_hired.py), so the same decode steps, and random_drop's prefill adds only its
    permutation draw: side by side, their speed-ups are within 10% of 1 (a separate process per setting beside
    other jobs once measured random_drop at 1.0 1.98x faster). HiRED's prefill is not the same computation: it
    scores two encoder layers and allocates the budget even at 1.0 (flops_selection > 0), so only its decode
    counts here. On the shipped reference model, the one the default config times."""
    evaluation = {"device": device, "dtype": "float32"}
    runs = [("llava_full", "default", {}), ("random_drop", "budget-1.0", {"budget": 1.0, "seed": 0}),
            ("hired", "budget-1.0", {"budget": 1.0, "mode": "paper", "alpha": 0.5, "score": "cls"})]
    built = SharedPlugins([(method, model_args(REPO / "checkpoints" / "reference_next", setting, evaluation))
                           for method, _, setting in runs])
    settings = [TimedSetting(f"{method}/{setting_id}", plugin.runner, plugin.accountant, plugin.label)
                for (method, setting_id, _), plugin in zip(runs, built.plugins)]
    config = LatencyConfig(samples=8, warmup=3, repeats=16, max_new_tokens=4, threads=1)
    record = measure_latency(settings, fixed_inputs(config.samples), config)
    built.check()  # what the forward passes install (transformers' output-capturing hooks) is no change
    for entry, (method, setting_id, setting) in zip(record["settings"], runs):
        entry.update(method=method, setting_id=setting_id, setting=setting)
    record["model"] = "reference_next"
    table = latency_table([record]).set_index("method")
    assert record["config"]["device"].startswith(device) and (table["peak_memory_mb"] > table["weights_mb"]).all()
    assert table.loc["hired", "mean_flops_llm_prefill"] == table.loc["llava_full", "mean_flops_llm_prefill"]
    for method, columns in (("random_drop", ("prefill_speedup", "decode_speedup", "generate_speedup")),
                            ("hired", ("decode_speedup",))):
        for column in columns:
            assert abs(table.loc[method, column] - 1) <= 0.1, (method, column, table.loc[method, column])


TOY = Architecture("toy", "qwen2", 32, 64, 3, 2, 1, 50, 20, 6, "toy")


def test_bench_rows_for_every_method():
    result = run_bench(TOY, warmup=0, repeats=1, max_new_tokens=2, threads=1, log=lambda line: None)
    methods = [row["method"] for row in result["rows"]]
    assert methods == ["llava_full", "hired@20%", "random_drop@20%", "visor[sa=0]", "visor[sa=1]",
                       "visor-tr[sa=1]@20%"]
    base = result["rows"][0]
    assert base["flop_ratio"] == 1.0 and base["speedup"] == 1.0
    for row in result["rows"]:
        assert row["prefill_s"]["n"] == 1 and row["decode_per_token_s"]["n"] == 1
        assert row["realised_share"] == pytest.approx(row["speedup"] * row["flop_ratio"])
    assert result["rows"][1]["visual_tokens"] == 4 and result["rows"][1]["prefill_flops"] < base["prefill_flops"]
    assert result["rows"][3]["prefill_flops"] < result["rows"][4]["prefill_flops"] < base["prefill_flops"]
    assert result["mfu_full_prefill"] is None and result["device"] == "cpu"
    table = markdown(result)
    assert table.count("\n| ") == 7 and "realised share" in table


def test_bench_batch_multiplies_the_work_not_the_ratios():
    single = run_bench(TOY, warmup=0, repeats=1, max_new_tokens=2, threads=1, log=lambda line: None)
    batched = run_bench(TOY, warmup=0, repeats=1, max_new_tokens=2, threads=1, batch_size=3, log=lambda line: None)
    assert batched["batch_size"] == 3 and "batch of 3 x prompt" in markdown(batched)
    for one, three in zip(single["rows"], batched["rows"]):
        assert three["prefill_flops"] == 3 * one["prefill_flops"]
        assert three["flop_ratio"] == pytest.approx(one["flop_ratio"])


def test_bench_cli_with_caps(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--arch", "llava-ov-0.5b", "--layers", "2", "--visual-tokens", "12", "--text-tokens", "6",
                 "--vocab", "64", "--warmup", "0", "--repeats", "1", "--max-new-tokens", "2", "--threads", "1",
                 "--json", str(out), "--markdown", str(tmp_path / "bench.md")]) == 0
    [result] = json.loads(out.read_text())
    assert result["layers"] == 2 and result["layers_full"] == 24 and result["n_visual"] == 12
    assert result["architecture"]["hidden"] == 896  # real widths, capped depth
    assert "llava-ov-0.5b" in capsys.readouterr().out and (tmp_path / "bench.md").read_text()


def test_architectures_and_peak_table():
    assert ARCHITECTURES["llava-ov-0.5b"].n_visual == 7290 == 10 * 729
    assert ARCHITECTURES["llava-next-7b"].n_visual == 2880 == 5 * 576
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.4 and peak_tflops("AMD EPYC") is None
    assert torch.get_default_dtype() == torch.float32  # the bench restores it
