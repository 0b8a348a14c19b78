"""Synchronised latency of one model x method x setting on fixed inputs, outside lmms-eval.

    record = measure_latency(runner, accountant, fixed_inputs(8), LatencyConfig())

What is measured, per sample (batch size 1), on exactly the runner's code path (`runner.process_images`,
`runner.visual_tokens`, `runner.splice`, then the method's greedy generation with a KV cache):

  preprocess_s        PIL image processor + tokenisation (host work, outside the model)
  prefill_s           time to first token: from the pixel tensors to the first token's logits (vision tower,
                      projector, the method's token selection, splice, LLM prefill, LM head)
  decode_per_token_s  one greedy decode step (embed, LLM with the KV cache, LM head, argmax), the median of
                      the intervals between consecutive LM-head calls
  generate_s          pixel tensors to the last token (the whole generation)

End-of-sequence is disabled, so every sample generates exactly `max_new_tokens` tokens (max_new_tokens - 1
decode steps). Each sample is run `warmup` times untimed, then `repeats` times; a statistic is the median and
the interquartile range over all sample x repeat measurements (`stats`).

Synchronisation: on CUDA, timestamps are CUDA events recorded on the current stream (start, after every LM-head
call, end) and read after `torch.cuda.synchronize()`; on CPU, kernels run synchronously and timestamps are
`time.perf_counter()`.

Peak memory (one extra, untimed pass over the samples, so that measuring does not perturb the timings):
  CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`; peak_mb is the absolute peak
        (weights included), delta_mb the peak minus the memory allocated before the pass.
  CPU:  resident set size sampled every millisecond from /proc/self/statm by a background thread; peak_mb is
        the largest RSS seen, delta_mb that minus the RSS before the pass (activations, KV cache, allocator
        growth). Where /proc is missing, the delta of `resource.getrusage().ru_maxrss` (a lifetime peak: 0 when
        the pass stays below an earlier peak). The method used is written into the record.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import resource
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from visor_model.efficiency.accounting import FlopAccountant, SampleTokens
from visor_model.llava.generation import greedy_generate
from visor_model.llava.runner import prompt_ids, to_rgb
from visor_model.provenance import environment

DEFAULT_TASKS = ("synth_background", "synth_shape", "synth_marker")


@dataclass(frozen=True)
class LatencyConfig:
    samples: int = 8
    warmup: int = 2
    repeats: int = 5
    max_new_tokens: int = 4
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    image_size: tuple[int, int] | None = None  # (height, width) to resize the fixed images to; None: as drawn
    seed: int = 0

    def __post_init__(self):
        for name in ("samples", "repeats", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.warmup) < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup!r}")
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))


def fixed_inputs(n: int, seed: int = 0, tasks=DEFAULT_TASKS, image_size: tuple[int, int] | None = None
                 ) -> list[tuple[Image.Image, str]]:
    """n (image, question) pairs, a deterministic function of the arguments: synthetic scenes of
    `visor_model.reference.tasks` (a "latency" split of its own, cycling over `tasks`), optionally resized."""
    from visor_model.reference.tasks import generate_split

    per_task = math.ceil(n / len(tasks))
    rows = {task: generate_split(task, "latency", per_task, seed) for task in tasks}
    pairs = []
    for i in range(n):
        row = rows[tasks[i % len(tasks)]][i // len(tasks)]
        image = row["image"]
        if image_size is not None:
            image = image.resize((image_size[1], image_size[0]), Image.BICUBIC)
        pairs.append((image, row["question"]))
    return pairs


# ----------------------------------------------------------------------------------------------------------
# clocks


class Clock:
    """Timestamps that mean "the device has finished everything queued so far"."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000.0
        return end - start

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @property
    def description(self) -> str:
        return ("CUDA events on the current stream, read after torch.cuda.synchronize()" if self.cuda
                else "time.perf_counter() (CPU kernels are synchronous)")


@dataclass
class CallTiming:
    prefill_s: float
    decode_steps_s: list[float]
    total_s: float


def timed_generation(lm_head: torch.nn.Module, clock: Clock, run):
    """Run `run()`; timestamps at its start, after every `lm_head` call and at its end.
    Returns (CallTiming, run's result). prefill = start -> first LM-head call; decode steps = intervals
    between consecutive LM-head calls."""
    marks = []
    handle = lm_head.register_forward_hook(lambda module, args, output: marks.append(clock.mark()))
    try:
        clock.synchronize()
        start = clock.mark()
        result = run()
        end = clock.mark()
        clock.synchronize()
    finally:
        handle.remove()
    if not marks:
        raise RuntimeError("the LM head was never called")
    steps = [clock.seconds(a, b) for a, b in itertools.pairwise(marks)]
    return CallTiming(clock.seconds(start, marks[0]), steps, clock.seconds(start, end)), result


# ----------------------------------------------------------------------------------------------------------
# memory


class RssSampler:
    """Largest resident set size of this process while active (Linux /proc/self/statm, every `interval` s)."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def available() -> bool:
        return os.path.exists("/proc/self/statm")

    def rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.before = self.rss()
        self.peak = self.before
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def measure_memory(device: torch.device, run_all) -> dict:
    """Peak memory of `run_all()` (see the module docstring for the method per device)."""
    mb = 1024.0 * 1024.0
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_all()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"method": "torch.cuda.max_memory_allocated (peak of the caching allocator's allocated bytes)",
                "peak_mb": peak / mb, "delta_mb": (peak - before) / mb, "before_mb": before / mb}
    if RssSampler.available():
        with RssSampler() as sampler:
            run_all()
        return {"method": "CPU resident set size sampled every 1 ms from /proc/self/statm during an untimed pass",
                "peak_mb": sampler.peak / mb, "delta_mb": (sampler.peak - sampler.before) / mb,
                "before_mb": sampler.before / mb}
    unit = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    run_all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    return {"method": "resource.getrusage ru_maxrss delta (process lifetime peak; 0 if below an earlier peak)",
            "peak_mb": peak / mb, "delta_mb": (peak - before) / mb, "before_mb": before / mb}


# ----------------------------------------------------------------------------------------------------------
# statistics


def stats(values) -> dict:
    """median, quartiles, IQR, mean, min, max and count of a list of seconds (NaN when empty)."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        nan = float("nan")
        return {"median": nan, "q25": nan, "q75": nan, "iqr": nan, "mean": nan, "min": nan, "max": nan, "n": 0}
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "iqr": float(q75 - q25),
            "mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()),
            "n": int(values.size)}


# ----------------------------------------------------------------------------------------------------------
# one sample through a runner


@dataclass
class PreparedSample:
    pixel_values: torch.Tensor
    image_sizes: torch.Tensor
    prompt: list[int]
    key: str
    preprocess_s: float = 0.0


def prepare(runner, image: Image.Image, question: str, key: str) -> PreparedSample:
    start = time.perf_counter()
    pixel_values, image_sizes = runner.process_images([to_rgb(image)])
    prompt = prompt_ids(runner.loaded.tokenizer, runner.model.config.image_token_id, question)
    return PreparedSample(pixel_values, image_sizes, prompt, key, time.perf_counter() - start)


def generate_ids(runner, batch, max_new_tokens: int):
    """Greedy generation with end-of-sequence disabled, through the method's own generation code:
    `VisorModel.generate` for a VISOR runner, else `greedy_generate`. Returns (token ids of row 0, roles
    or None, routed)."""
    visor = getattr(runner, "visor", None)
    if visor is not None:
        out = visor.generate(batch, max_new_tokens, None, active=runner.active, threshold=runner.threshold)
        return out.token_ids[0], tuple(out.roles[0]), out.probabilities is not None
    return greedy_generate(runner.model, batch, max_new_tokens, None).token_ids[0], None, False


@torch.no_grad()
def run_sample(runner, sample: PreparedSample, max_new_tokens: int, clock: Clock):
    """(CallTiming, SampleTokens) of one generation of `sample`."""
    info = {}

    def run():
        vision, kept = runner.visual_tokens(sample.pixel_values, sample.image_sizes, [sample.key])
        batch = runner.splice([sample.prompt], kept)
        ids, roles, routed = generate_ids(runner, batch, max_new_tokens)
        info.update(n_visual=int(kept[0].features.shape[0]), n_crops=int(vision.crop_owner.numel()),
                    produced=len(ids), roles=roles, routed=routed, image=vision.images[0])

    timing, _ = timed_generation(runner.model.lm_head, clock, run)
    tokens = SampleTokens(n_text=len(sample.prompt) - 1, n_visual=info["n_visual"], n_crops=info["n_crops"],
                          produced=info["produced"], roles=info["roles"], routed=info["routed"],
                          crop_patches=info["image"].crop_patches(info["n_crops"]))
    return timing, tokens


def prefill_flops(record: dict, lm_head_one: int) -> int:
    """FLOPs up to the first token: everything but the decode steps and their LM-head calls."""
    return (record["flops_vision"] + record["flops_projector"] + record["flops_selection"]
            + record["flops_llm_prefill"] + lm_head_one)


def measure_latency(runner, accountant: FlopAccountant, inputs: list[tuple[Image.Image, str]],
                    config: LatencyConfig = LatencyConfig(), label: str | None = None) -> dict:
    """The latency record of `runner` (a `VisionLanguageRunner` or `VisorRunner`) on `inputs`; its "method" is
    `label` (a plugin's `label`, e.g. visor[sa=2]), by default the name of the runner's reducer."""
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = runner.device
    clock = Clock(device)
    samples = [prepare(runner, image, question, f"latency/{i}") for i, (image, question) in enumerate(inputs)]
    n_tokens = config.max_new_tokens

    for _ in range(config.warmup):
        for sample in samples:
            run_sample(runner, sample, n_tokens, clock)

    per_sample = [{"prefill_s": [], "decode_per_token_s": [], "generate_s": []} for _ in samples]
    tokens: list[SampleTokens | None] = [None] * len(samples)
    for _ in range(config.repeats):
        for i, sample in enumerate(samples):
            timing, tokens[i] = run_sample(runner, sample, n_tokens, clock)
            per_sample[i]["prefill_s"].append(timing.prefill_s)
            per_sample[i]["generate_s"].append(timing.total_s)
            per_sample[i]["decode_per_token_s"].extend(timing.decode_steps_s)
            if len(timing.decode_steps_s) != n_tokens - 1:
                raise RuntimeError(f"expected {n_tokens - 1} decode steps, timed {len(timing.decode_steps_s)}")

    memory = measure_memory(device, lambda: [run_sample(runner, s, n_tokens, clock) for s in samples])

    flop_records = [accountant.record(t) for t in tokens]
    lm_head_one = 2 * accountant.shape.llm.hidden * accountant.shape.llm.vocab
    for record in flop_records:
        record["flops_prefill"] = prefill_flops(record, lm_head_one)
    keys = flop_records[0].keys()
    timings = {name: stats([v for s in per_sample for v in s[name]])
               for name in ("prefill_s", "decode_per_token_s", "generate_s")}
    timings["preprocess_s"] = stats([s.preprocess_s for s in samples])
    env = environment(str(device))
    env.update(torch_threads=torch.get_num_threads(), clock=clock.description,
               cuda=torch.version.cuda if torch.cuda.is_available() else None)
    return {
        "config": {**asdict(config), "dtype": str(next(runner.model.parameters()).dtype).replace("torch.", ""),
                   "device": str(device)},
        "environment": env,
        "method": label if label is not None else getattr(runner.reducer, "name", None),
        "timings": timings,
        "memory": memory,
        "flops": {"mean": {k: float(np.mean([r[k] for r in flop_records])) for k in keys},
                  "per_sample": flop_records},
        "samples": [{"n_text": t.n_text, "n_visual": t.n_visual, "n_crops": t.n_crops,
                     "roles": list(t.roles) if t.roles else None,
                     "prefill_s_median": stats(s["prefill_s"])["median"],
                     "decode_per_token_s_median": stats(s["decode_per_token_s"])["median"],
                     "preprocess_s": sample.preprocess_s}
                    for t, s, sample in zip(tokens, per_sample, samples)],
    }
