"""Synchronised latency of the settings of one model, timed side by side in one process, outside lmms-eval.

    record = measure_latency([TimedSetting("llava_full/default", runner, accountant), ...], fixed_inputs(8),
                             LatencyConfig())

What is measured, per sample (batch size 1), on exactly each runner's code path (`runner.process_images`,
`runner.visual_tokens`, `runner.splice`, then the method's greedy generation with a KV cache):

  preprocess_s        PIL image processor + tokenisation (host work, outside the model; once per sample)
  prefill_s           time to first token: from the pixel tensors to the first token's logits (vision tower,
                      projector, the method's token selection, splice, LLM prefill, LM head)
  decode_per_token_s  one greedy decode step (embed, LLM with the KV cache, LM head, argmax): the intervals
                      between consecutive LM-head calls
  generate_s          pixel tensors to the last token (the whole generation)

End-of-sequence is disabled, so every sample generates exactly `max_new_tokens` tokens (max_new_tokens - 1
decode steps).

Side by side: every setting of the model is measured in the same process, on the same inputs, interleaved, so
that whatever else the machine does (another job, frequency scaling, a noisy neighbour) falls on all settings
alike and shows up as spread between repeats, not as a difference between settings (timed one process per
setting beside other jobs, a budget-1.0 random drop, the base model's computation, once measured 1.98x faster
than the base model). The schedule:
  warm-up    `warmup` passes over the samples for every setting, in order, untimed;
  repeat r   for each sample, every setting once, in an order shuffled per (repeat, sample) by a torch.Generator
             seeded with `seed` (the orders are in the record), so that no setting is always first or last and
             repeat r of two settings ran interleaved over the same stretch of time: their ratios pair.
A repeat's value of a setting is the median over its samples (prefill_s, generate_s) or over all its decode
steps (decode_per_token_s). Each timing's record holds those per-repeat values, their median and a
distribution-free 95% CI (`visor_model.stats.median_interval`), and the quartiles over every sample x
repeat measurement (`stats`: the spread over samples, which differ in tokens). Speed-ups against the base model
pair the per-repeat values (`visor_model.audit.tables.latency_table`).

Synchronisation: on CUDA, timestamps are CUDA events recorded on the current stream (start, after every LM-head
call, end) and read after `torch.cuda.synchronize()`; on CPU, kernels run synchronously and timestamps are
`time.perf_counter()`.

Peak memory, per setting and repeat (`peak_memory`): the peak a generation adds over what was allocated before it
(`delta_mb`; the largest over the repeat's samples), plus the setting's own weights (`weights_mb`: parameters and
buffers of its model and modules, counted once where settings share a loaded checkpoint) as `peak_mb`: what one
process holding only this setting's model would peak at, without the runtime itself.
  CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, around each timed generation (host
        bookkeeping of the caching allocator: it adds no work or synchronisation to the timed interval).
  CPU:  resident set size sampled every millisecond from /proc/self/statm by a background thread, in an untimed
        pass over the samples per setting and repeat (the sampler would compete with the timed kernels), after
        glibc's malloc_trim has returned freed heap memory to the OS (else one setting would reuse pages an earlier
        one left behind, and its delta would read 0). Where /proc is missing, the delta of
        `resource.getrusage().ru_maxrss` (a lifetime peak: 0 when the pass stays below an earlier peak).
  The method used is written into the record.
"""

from __future__ import annotations

import ctypes
import functools
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
from visor_model.stats import median_interval

DEFAULT_TASKS = ("synth_background", "synth_shape", "synth_marker")
MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class LatencyConfig:
    samples: int = 8
    warmup: int = 2
    repeats: int = 10  # interleaved repeats; the CIs need 6 at least (`median_interval`)
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


@functools.cache
def _glibc():
    """glibc, for malloc_trim; None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


class MemoryProbe:
    """The peak memory a run adds over what was allocated before it, on `device` (the module docstring says how).
    On CUDA it wraps the timed runs themselves (`in_timed_runs`); on CPU it needs runs of its own."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.rss = not self.cuda and RssSampler.available()
        self.trim = self.rss and _glibc() is not None

    @property
    def in_timed_runs(self) -> bool:
        return self.cuda

    @property
    def method(self) -> str:
        if self.cuda:
            return ("torch.cuda.max_memory_allocated over memory_allocated before, around every timed generation "
                    "(the caching allocator's allocated bytes) + the setting's weights")
        if self.rss:
            return ("CPU resident set size over the RSS before, sampled every 1 ms from /proc/self/statm during an "
                    f"untimed pass{' after malloc_trim(0)' if self.trim else ''} + the setting's weights")
        return "resource.getrusage ru_maxrss delta (process lifetime peak; 0 if below an earlier peak) + the weights"

    def measure(self, run):
        """(run(), bytes of its peak over what was allocated before it)."""
        if self.cuda:
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            result = run()
            torch.cuda.synchronize()
            return result, torch.cuda.max_memory_allocated() - before
        if self.rss:
            if self.trim:
                _glibc().malloc_trim(0)
            with RssSampler() as sampler:
                result = run()
            return result, sampler.peak - sampler.before
        unit = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        result = run()
        return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit - before


def weights_bytes(runner) -> int:
    """Bytes of the parameters and buffers `runner` runs: its model and, for VISOR, its modules (each tensor once)."""
    modules = [runner.model] + [m for m in (getattr(runner, "visor", None),) if isinstance(m, torch.nn.Module)]
    sizes = {}
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            sizes[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(sizes.values())


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


def repeat_stats(per_repeat, measurements) -> dict:
    """A timing of one setting: the median of its per-repeat values with their 95% CI (`median_interval`), the
    per-repeat values themselves, and the spread (`stats`) over all sample x repeat `measurements`."""
    median, low, high = median_interval(per_repeat)
    spread = stats(measurements)
    return {"median": median, "ci_low": low, "ci_high": high, "per_repeat": [float(v) for v in per_repeat],
            **{key: spread[key] for key in ("q25", "q75", "iqr", "mean", "min", "max", "n")}}


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
    `VisorModel.generate` for a VISOR runner, `FastV.generate` for a FastV runner, else `greedy_generate`. Returns
    (token ids of row 0, roles or None, routed, FastV's visual tokens per layer or None)."""
    visor = getattr(runner, "visor", None)
    if visor is not None:
        out = visor.generate(batch, max_new_tokens, None, active=runner.active, threshold=runner.threshold)
        return out.token_ids[0], tuple(out.roles[0]), out.probabilities is not None, None
    fastv = getattr(runner, "fastv", None)
    if fastv is not None:
        out = fastv.generate(batch, max_new_tokens, None)
        return out.token_ids[0], None, False, fastv.visual_per_layer(int(batch.visual_mask[0].sum()),
                                                                     out.visual_tokens_after[0])
    return greedy_generate(runner.model, batch, max_new_tokens, None).token_ids[0], None, False, None


@torch.no_grad()
def run_sample(runner, sample: PreparedSample, max_new_tokens: int, clock: Clock):
    """(CallTiming, SampleTokens) of one generation of `sample`."""
    info = {}

    def run():
        vision, kept = runner.visual_tokens(sample.pixel_values, sample.image_sizes, [sample.key])
        batch = runner.splice([sample.prompt], kept)
        ids, roles, routed, visual_per_layer = generate_ids(runner, batch, max_new_tokens)
        info.update(n_visual=int(kept[0].features.shape[0]), n_crops=int(vision.crop_owner.numel()),
                    produced=len(ids), roles=roles, routed=routed, visual_per_layer=visual_per_layer,
                    image=vision.images[0])

    timing, _ = timed_generation(runner.model.lm_head, clock, run)
    tokens = SampleTokens(n_text=len(sample.prompt) - 1, n_visual=info["n_visual"], n_crops=info["n_crops"],
                          produced=info["produced"], roles=info["roles"], routed=info["routed"],
                          visual_per_layer=info["visual_per_layer"],
                          crop_patches=info["image"].crop_patches(info["n_crops"]))
    return timing, tokens


def run_all(runner, samples: list[PreparedSample], max_new_tokens: int, clock: Clock) -> None:
    """One untimed pass over `samples` (the CPU memory pass)."""
    for sample in samples:
        run_sample(runner, sample, max_new_tokens, clock)


def prefill_flops(record: dict, lm_head_one: int) -> int:
    """FLOPs up to the first token: everything but the decode steps and their LM-head calls."""
    return (record["flops_vision"] + record["flops_projector"] + record["flops_selection"]
            + record["flops_llm_prefill"] + lm_head_one)


# ----------------------------------------------------------------------------------------------------------
# the settings of one model, side by side


@dataclass
class TimedSetting:
    """One setting to time: `name` (unique in the run, e.g. "hired/budget-0.2"), the runner of its method (a
    plugin's `runner`: `VisionLanguageRunner` or `VisorRunner`), its FLOP accountant and a `label` for the log
    (a plugin's `label`, e.g. visor[sa=2]; by default the runner's reducer name)."""

    name: str
    runner: object
    accountant: FlopAccountant
    label: str | None = None


def measure_latency(settings: list[TimedSetting], inputs: list[tuple[Image.Image, str]],
                    config: LatencyConfig = LatencyConfig()) -> dict:
    """The latency record of `settings` (of one model, on one device) timed side by side on `inputs`, under the
    schedule of the module docstring: the run's config, environment and schedule, and a record per setting (in
    the given order) with its timings, peak memory, FLOPs and per-sample token counts."""
    names = [setting.name for setting in settings]
    if not settings or len(set(names)) != len(names):
        raise ValueError(f"measure_latency needs settings with unique names, got {names}")
    devices = {str(setting.runner.device) for setting in settings}
    if len(devices) != 1:
        raise ValueError(f"the settings of one latency run must share a device, got {sorted(devices)}")
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = settings[0].runner.device
    clock, probe = Clock(device), MemoryProbe(device)
    n_tokens, n_samples, repeats = config.max_new_tokens, len(inputs), config.repeats
    prepared = [[prepare(s.runner, image, question, f"latency/{i}") for i, (image, question) in enumerate(inputs)]
                for s in settings]

    for _ in range(config.warmup):
        for setting, samples in zip(settings, prepared):
            for sample in samples:
                run_sample(setting.runner, sample, n_tokens, clock)

    generator = torch.Generator().manual_seed(config.seed)
    timings = [[[] for _ in range(repeats)] for _ in settings]  # [setting][repeat] -> CallTiming per sample
    deltas = [[0] * repeats for _ in settings]  # [setting][repeat] -> peak bytes over the memory before
    tokens: list[list[SampleTokens | None]] = [[None] * n_samples for _ in settings]
    orders = []
    for r in range(repeats):
        for i in range(n_samples):
            order = torch.randperm(len(settings), generator=generator).tolist()
            orders.append(order)
            for j in order:
                generate = functools.partial(run_sample, settings[j].runner, prepared[j][i], n_tokens, clock)
                if probe.in_timed_runs:
                    (timing, tokens[j][i]), delta = probe.measure(generate)
                    deltas[j][r] = max(deltas[j][r], delta)
                else:
                    timing, tokens[j][i] = generate()
                if len(timing.decode_steps_s) != n_tokens - 1:
                    raise RuntimeError(f"expected {n_tokens - 1} decode steps, timed {len(timing.decode_steps_s)}")
                timings[j][r].append(timing)
        if not probe.in_timed_runs:
            for j in torch.randperm(len(settings), generator=generator).tolist():
                deltas[j][r] = probe.measure(functools.partial(run_all, settings[j].runner, prepared[j], n_tokens,
                                                               clock))[1]

    env = environment(str(device))
    env.update(torch_threads=torch.get_num_threads(), clock=clock.description,
               cuda=torch.version.cuda if torch.cuda.is_available() else None)
    return {
        "config": {**asdict(config), "dtype": str(next(settings[0].runner.model.parameters()).dtype).replace(
            "torch.", ""), "device": str(device)},
        "environment": env,
        "schedule": {"description": "warm-up per setting in order; then per repeat and sample every setting once, "
                                    "in a seeded shuffled order (orders[repeat * samples + sample])",
                     "orders": orders},
        "settings": [setting_record(setting, timings[j], deltas[j], tokens[j], prepared[j], probe.method)
                     for j, setting in enumerate(settings)],
    }


def setting_record(setting: TimedSetting, timings: list[list[CallTiming]], deltas: list[int],
                   tokens: list[SampleTokens], samples: list[PreparedSample], memory_method: str) -> dict:
    """One setting's part of the latency record: timings per repeat ([repeat][sample]), memory deltas per repeat."""
    per_repeat = {
        "prefill_s": [[t.prefill_s for t in repeat] for repeat in timings],
        "generate_s": [[t.total_s for t in repeat] for repeat in timings],
        "decode_per_token_s": [[step for t in repeat for step in t.decode_steps_s] for repeat in timings],
    }
    record_timings = {name: repeat_stats([np.median(values) if values else float("nan") for values in repeats],
                                         [v for values in repeats for v in values])
                      for name, repeats in per_repeat.items()}
    record_timings["preprocess_s"] = stats([s.preprocess_s for s in samples])
    weights_mb = weights_bytes(setting.runner) / MB
    delta_mb = [d / MB for d in deltas]
    peak_mb = [weights_mb + d for d in delta_mb]
    peak, peak_low, peak_high = median_interval(peak_mb)

    flop_records = [setting.accountant.record(t) for t in tokens]
    lm_head_one = 2 * setting.accountant.shape.llm.hidden * setting.accountant.shape.llm.vocab
    for record in flop_records:
        record["flops_prefill"] = prefill_flops(record, lm_head_one)
    return {
        "name": setting.name,
        "label": setting.label if setting.label is not None else getattr(setting.runner.reducer, "name", None),
        "timings": record_timings,
        "memory": {"method": memory_method, "weights_mb": weights_mb, "peak_mb": peak, "ci_low": peak_low,
                   "ci_high": peak_high, "delta_mb": float(np.median(delta_mb)), "per_repeat_peak_mb": peak_mb,
                   "per_repeat_delta_mb": delta_mb},
        "flops": {"mean": {k: float(np.mean([r[k] for r in flop_records])) for k in flop_records[0]},
                  "per_sample": flop_records},
        "samples": [{"n_text": t.n_text, "n_visual": t.n_visual, "n_crops": t.n_crops,
                     "roles": list(t.roles) if t.roles else None,
                     "prefill_s_median": float(np.median([repeat[i].prefill_s for repeat in timings])),
                     "decode_per_token_s_median": float(np.median([step for repeat in timings
                                                                   for step in repeat[i].decode_steps_s] or [np.nan])),
                     "preprocess_s": sample.preprocess_s}
                    for i, (t, sample) in enumerate(zip(tokens, samples))],
    }
