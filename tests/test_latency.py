"""Latency measurement (visor_model.efficiency.latency) and the speed benchmark (visor_model.efficiency.speed_bench)
at toy size: the structure of their outputs, never the timings."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config

from visor_model.audit.tables import latency_table
from visor_model.efficiency.accounting import FlopAccountant
from visor_model.efficiency.latency import (
    LatencyConfig,
    RssSampler,
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


def check_record(record, config):
    assert set(record["timings"]) == {"prefill_s", "decode_per_token_s", "generate_s", "preprocess_s"}
    n = config.samples * config.repeats
    assert record["timings"]["prefill_s"]["n"] == n
    assert record["timings"]["decode_per_token_s"]["n"] == n * (config.max_new_tokens - 1)
    for name, s in record["timings"].items():
        assert s["q25"] <= s["median"] <= s["q75"] and s["iqr"] >= 0 and s["median"] > 0, name
    assert record["memory"]["method"] and record["memory"]["peak_mb"] > 0 and record["memory"]["delta_mb"] >= 0
    assert record["environment"]["device"] and record["environment"]["versions"]["torch"]
    assert record["config"]["dtype"] == "float32" and record["config"]["device"] == "cpu"
    assert len(record["flops"]["per_sample"]) == config.samples == len(record["samples"])
    mean = record["flops"]["mean"]
    assert mean["flops_prefill"] >= mean["flops_llm_prefill"] > 0 and mean["flops_llm_decode"] > 0
    json.dumps(record)  # serialisable as it is


@pytest.mark.parametrize("method", ["full", "hired"])
def test_measure_latency_of_a_host_method(loaded, method):
    reducer = FullTokens() if method == "full" else HiRED(0.3, model=loaded.model)
    runner = VisionLanguageRunner(loaded, reducer)
    record = measure_latency(runner, FlopAccountant.for_model(loaded.model, reducer), fixed_inputs(2), CONFIG)
    check_record(record, CONFIG)
    assert record["method"] == reducer.name
    assert (record["flops"]["mean"]["flops_selection"] > 0) == (method == "hired")


def test_measure_latency_of_visor_policy(loaded):
    visor = VisorModel(loaded.model, VisorConfig(n_layers=3))  # CA (0,), SA candidate (1,), router at 1
    visor.set_viable(visor.config.family())
    runner = VisorRunner(loaded, visor, threshold=0.5)
    record = measure_latency(runner, FlopAccountant.for_model(loaded.model, None, visor), fixed_inputs(2), CONFIG,
                             label="visor[tau=0.5]")
    check_record(record, CONFIG)
    assert record["method"] == "visor[tau=0.5]" and runner.reducer.name == "full"
    assert all(s["roles"][0] == "ca" for s in record["samples"])
    assert record["flops"]["mean"]["flops_llm_prefill_router"] > 0


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


def test_latency_table_has_speedups_against_llava_full():
    def record(method, prefill, flops):
        timing = {"median": prefill, "q25": prefill, "q75": prefill, "iqr": 0.0, "n": 4}
        return {"model": "m", "method": method, "setting_id": "default", "setting": {},
                "timings": {"prefill_s": timing, "decode_per_token_s": dict(timing, median=0.01)},
                "memory": {"peak_mb": 1.0, "method": "x"},
                "environment": {"device": "cpu", "versions": {}, "lock": {"sha256": "0" * 64}},
                "config": {"samples": 2, "repeats": 2, "warmup": 1, "max_new_tokens": 3, "threads": 1},
                "flops": {"mean": {"flops_llm_prefill": flops, "flops_total": 2 * flops, "flops_prefill": 1.5 * flops}}}

    table = latency_table([record("llava_full", 0.2, 100.0), record("random_drop", 0.1, 25.0)])
    row = table.set_index("method").loc["random_drop"]
    assert row["prefill_speedup"] == pytest.approx(2.0) and row["llm_prefill_flop_ratio"] == pytest.approx(0.25)
    assert row["prefill_flop_ratio"] == pytest.approx(0.25) and row["prefill_realised_share"] == pytest.approx(0.5)


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
