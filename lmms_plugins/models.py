"""lmms-eval model classes for the efficiency methods. Thin: every method's logic lives in `visor_model`.

Each class turns lmms-eval requests into batches for `visor_model.llava.runner.VisionLanguageRunner` and returns
`GenerationResult`s whose token counts carry the per-sample accounting (visual tokens before and after
reduction, prefill length, the tokens that entered the LLM, layers per VISOR role, and the analytic FLOPs by
term from `visor_model.efficiency.accounting`), so it lands in lmms-eval's per-sample log; means go to
`results["throughput"]`. Subclasses change the per-sample record through two hooks: `counts_class` (the
`VisualTokenCounts` subclass) and `build_accountant` (the `FlopAccountant` of the model and method).

One odd document does not abort a run: a sample that cannot be answered (an empty question, an image that is
missing or cannot be decoded, an input the model rejects) gets an empty answer whose log entry is only its
`skipped_reason` (no token counts, no FLOPs); `lmms_plugins.run.check_outputs` counts those and fails the job
above `max_empty_fraction`, naming the documents.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger as eval_logger
from PIL import Image
from tqdm import tqdm

from visor_model.devices import resolve_device
from visor_model.efficiency.accounting import FlopAccountant, SampleTokens
from visor_model.llava.checkpoints import load_checkpoint
from visor_model.llava.runner import SampleRecord, VisionLanguageRunner
from visor_model.methods.base import FullTokens, RandomDrop, TokenReducer

# A task without `max_new_tokens` in its generation_kwargs (e.g. textvqa_val) gets what lmms-eval 0.7.3's own
# LLaVA models use: `llava_hf`, `llava` and `llava_onevision` set 1024 in generate_until. Answers stop earlier,
# at eos or a stop string, so the limit costs nothing unless a model rambles.
DEFAULT_MAX_NEW_TOKENS = 1024


# C0 control characters but tab, newline and carriage return: no answer means them, XML cannot hold them, and some
# tasks' aggregations write the answers to a spreadsheet (MMBench: openpyxl refuses them, and the job fails). They
# are removed from what the plugins return; a byte-level tokenizer can produce them.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")

@dataclass
class VisualTokenCounts(TokenCounts):
    """lmms-eval's token counts plus the visual-token and FLOP accounting of one sample.

    `to_dict` (what lmms-eval writes to the per-sample log) flattens `flops` into top-level keys
    (flops_vision, flops_llm_prefill, ..., fastv_macs, layers_sa, ...: see `visor_model.efficiency.accounting`).
    A sample that was not answered logs only its `skipped_reason`."""

    visual_tokens: int | None = None
    visual_tokens_kept: int | None = None
    newline_tokens_kept: int | None = None
    crops: int | None = None
    llm_visual_tokens: int | None = None  # visual tokens that entered the LLM (newlines included)
    llm_text_tokens: int | None = None  # text tokens of the prompt
    finish_reason: str | None = None  # why decoding stopped: "eos", "stop" (an `until` string) or "length"
    flops: dict[str, int] | None = None
    skipped_reason: str | None = None  # why the sample was not answered (then nothing else is set)

    FIELDS = ("visual_tokens", "visual_tokens_kept", "newline_tokens_kept", "crops", "llm_visual_tokens",
              "llm_text_tokens", "finish_reason")

    def to_dict(self):
        if self.skipped_reason is not None:
            return {"skipped_reason": self.skipped_reason}
        counts = super().to_dict()
        for cls in reversed(type(self).__mro__):
            for name in cls.__dict__.get("FIELDS", ()):
                counts[name] = getattr(self, name)
        counts.update(self.flops or {})
        return counts

    @classmethod
    def from_record(cls, record: SampleRecord, tokens: SampleTokens | None = None,
                    flops: dict[str, int] | None = None) -> VisualTokenCounts:
        return cls(
            input_tokens=record.prompt_tokens,
            output_tokens=record.generated_tokens,
            visual_tokens=record.visual_tokens,
            visual_tokens_kept=record.visual_tokens_kept,
            newline_tokens_kept=record.newline_tokens_kept,
            crops=record.crops,
            finish_reason=record.finish_reason,
            llm_visual_tokens=None if tokens is None else tokens.n_visual,
            llm_text_tokens=None if tokens is None else tokens.n_text,
            flops=flops,
        )


# What a batch raises when one of its inputs cannot be taken (the image processor rejects an image, a prompt cannot
# be built); the samples are then run one by one. Anything else (out of memory, a bug) still aborts the run.
INPUT_ERRORS = (ValueError, OSError, Image.DecompressionBombError)


class EfficientLlava(lmms):
    """Shared model args: pretrained (folder or hub id), revision, device, dtype, batch_size, max_new_tokens; every
    other arg is the method's.

    `__init__` is a template method; a subclass overrides its steps, in this order:
      check_args(**method_args)       reject inconsistent method args before anything is loaded (default: none)
      load_model(pretrained, revision, dtype, **method_args)
                                      set `self.checkpoint` (default: `load_checkpoint`)
      build_runner(**method_args)     set `self.reducer` (default: `build_reducer(**method_args)`) and return the
                                      runner (default: `VisionLanguageRunner`)
      build_accountant()              the FLOP accounting of the model and method
    `label` is what the progress bar shows for a run (default: the reducer's name).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        revision: str | None = None,
        device: str | None = "auto",
        dtype: str = "float32",
        batch_size: int | str = 8,
        max_new_tokens: int | str | None = None,
        **method_args,
    ) -> None:
        super().__init__()
        self.check_args(**method_args)
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.max_new_tokens_override = int(max_new_tokens) if max_new_tokens else None
        self.device_name = resolve_device(device)
        self.load_model(str(pretrained), revision or None, dtype, **method_args)
        self.runner = self.build_runner(**method_args)
        self.accountant = self.build_accountant()

    counts_class = VisualTokenCounts

    def check_args(self, **method_args) -> None:
        """Reject inconsistent method args before the checkpoint is loaded (the other hooks get the same args)."""

    def load_model(self, pretrained: str, revision: str | None, dtype: str, **method_args) -> None:
        """Load the checkpoint onto `self.device_name` as `self.checkpoint`."""
        self.checkpoint = load_checkpoint(pretrained, revision, self.device_name, dtype)

    def build_runner(self, **method_args) -> VisionLanguageRunner:
        """Set `self.reducer` from the method args and return the runner that generates with it."""
        self.reducer = self.build_reducer(**method_args)
        return VisionLanguageRunner(self.checkpoint, self.reducer, self.device_name)

    def build_reducer(self, **method_args) -> TokenReducer:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """What the progress bar (and a latency record) shows for this run."""
        return self.reducer.name

    def build_accountant(self) -> FlopAccountant:
        """The FLOP accounting of this model and method (VISOR adds its conv and router)."""
        return FlopAccountant.for_model(self.checkpoint.model, self.reducer)

    def token_counts(self, record: SampleRecord, max_new_tokens: int) -> VisualTokenCounts:
        """The per-sample log entry of one generated answer (`max_new_tokens`: the limit it ran under)."""
        tokens = SampleTokens.from_record(record, max_new_tokens)
        return self.counts_class.from_record(record, tokens, self.accountant.record(tokens))

    def clean(self):
        """lmms-eval deletes every nn.Module attribute after a run; the runner owns the model, keep it."""

    def request_image(self, request) -> Image.Image | str:
        """The request's one image, decoded, or why the sample cannot be answered: an empty question, or a document
        whose image is missing, not one image or cannot be decoded."""
        context, _, doc_to_visual, doc_id, task, split = request.args
        if not isinstance(context, str) or not context.strip():
            return "the question is empty"
        try:  # `datasets` decodes the image when the row is read; doc_to_visual is the task's code on its data
            visuals = [v for v in doc_to_visual(self.task_dict[task][split][doc_id]) if v is not None]
            if len(visuals) == 1 and isinstance(visuals[0], Image.Image):
                visuals[0].load()  # decode a lazily opened file now, not in the middle of a batch
        except Exception as error:  # whatever the document's data makes the task's code raise
            return f"its image cannot be loaded: {type(error).__name__}: {error}"
        if len(visuals) != 1:
            return f"expected exactly one image, got {len(visuals)}"
        if not isinstance(visuals[0], Image.Image):
            return f"expected a PIL image, got {type(visuals[0]).__name__}"
        return visuals[0]

    def skipped(self, request, reason: str) -> GenerationResult:
        """The empty answer of a sample that cannot be answered; its log entry is the reason."""
        _, _, _, doc_id, task, split = request.args
        eval_logger.warning(f"{task} doc {doc_id} ({split}) is not answered: {reason}")
        return GenerationResult(text="", token_counts=self.counts_class(skipped_reason=reason))

    def generate_batch(self, images, questions, keys, budgets, until) -> list[SampleRecord | str]:
        """The runner's records of one batch. A batch that fails on its inputs is run again sample by sample; a
        sample that fails alone gets, in place of its record, the error as the reason it is not answered."""
        try:
            return self.runner.generate(images, questions, keys, budgets, until)
        except INPUT_ERRORS as error:
            eval_logger.warning(f"a batch of {len(keys)} failed ({type(error).__name__}: {error}); "
                                "running its samples one by one")
        outcomes: list[SampleRecord | str] = []
        for sample in zip(images, questions, keys, budgets, until):
            try:
                outcomes += self.runner.generate(*([value] for value in sample))
            except INPUT_ERRORS as error:
                outcomes.append(f"the model cannot take it: {type(error).__name__}: {error}")
        return outcomes

    def generate_until(self, requests) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        # Sort by prompt length so that batches pad little; answers are put back in request order.
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].args[0]))
        totals = {"visual_tokens": 0, "visual_tokens_kept": 0, "prompt_tokens": 0, "flops_llm_prefill": 0,
                  "flops_total": 0}
        generated, answered, started = 0, 0, time.perf_counter()
        progress = tqdm(total=len(requests), desc=self.label, disable=self.rank != 0)
        for start in range(0, len(order), self.batch_size_per_gpu):
            indices = order[start : start + self.batch_size_per_gpu]
            answerable, images, questions, keys, budgets, until = [], [], [], [], [], []
            for i in indices:
                image = self.request_image(requests[i])  # images are read batch by batch, as they are needed
                if isinstance(image, str):
                    results[i] = self.skipped(requests[i], image)
                    continue
                context, gen_kwargs, doc_to_visual, doc_id, task, split = requests[i].args
                answerable.append(i)
                images.append(image)
                questions.append(context)
                keys.append(f"{task}/{split}/{doc_id}")
                budgets.append(self.max_new_tokens_override
                               or int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)))
                stops = gen_kwargs.get("until") or []
                until.append([stops] if isinstance(stops, str) else list(stops))
            records = self.generate_batch(images, questions, keys, budgets, until) if answerable else []
            for i, record, limit in zip(answerable, records, budgets):
                if isinstance(record, str):
                    results[i] = self.skipped(requests[i], record)
                    continue
                counts = self.token_counts(record, limit)
                results[i] = GenerationResult(text=CONTROL_CHARACTERS.sub("", record.answer), token_counts=counts)
                totals["visual_tokens"] += record.visual_tokens
                totals["visual_tokens_kept"] += record.visual_tokens_kept
                totals["prompt_tokens"] += record.prompt_tokens
                totals["flops_llm_prefill"] += counts.flops["flops_llm_prefill"]
                totals["flops_total"] += counts.flops["flops_total"]
                generated += record.generated_tokens
                answered += 1
            progress.update(len(indices))
        progress.close()
        elapsed = time.perf_counter() - started
        n = max(1, answered)  # means over the answered samples, like the per-sample log's
        log_metrics(
            total_elapsed_time=elapsed,
            total_gen_tokens=generated,
            avg_speed=generated / elapsed if elapsed > 0 else 0.0,
            additional_metrics={**{key: value / n for key, value in totals.items()},
                                "skipped_samples": len(requests) - answered},
        )
        return results

    def loglikelihood(self, requests):
        raise NotImplementedError("these plugins support generate_until tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("these plugins support single-round generate_until tasks only")


class LlavaFull(EfficientLlava):
    """`llava_full`: the unmodified base model."""

    def build_reducer(self) -> TokenReducer:
        return FullTokens()


class RandomDropLlava(EfficientLlava):
    """`random_drop`: uniform random visual-token dropping (control); args budget=, seed=."""

    def build_reducer(self, budget: float | str = 1.0, seed: int | str = 0) -> TokenReducer:
        return RandomDrop(budget=budget, seed=int(seed))


class HiredLlava(EfficientLlava):
    """`hired`: HiRED token dropping (visor_model.methods.hired); args budget= (required), alpha=,
    mode=paper|reference_code, score=cls|mean_received (default: cls if the encoder has a CLS token),
    distribution_layer=, selection_layer= (default: the layer feeding the projector), newlines=all|occupied_rows|none
    (default: by mode), head= (one head's attention instead of the sum over heads)."""

    def build_reducer(
        self,
        budget: float | str | None = None,
        alpha: float | str = 0.5,
        mode: str = "paper",
        score: str | None = None,
        distribution_layer: int | str = 0,
        selection_layer: int | str | None = None,
        newlines: str | None = None,
        head: int | str | None = None,
    ) -> TokenReducer:
        from visor_model.methods.hired import HiRED

        if budget is None:
            raise ValueError("hired needs a budget, e.g. --model_args pretrained=DIR,budget=0.2")
        # lmms-eval turns "0.5" into 0.5 and "0" into 0 but leaves words as strings; HiRED validates every value
        # (and converts "3" / 3.0 layer indices), then derives score and selection_layer from the loaded model.
        return HiRED(
            budget=budget,
            alpha=alpha,
            mode=str(mode),
            score=score,
            distribution_layer=distribution_layer,
            selection_layer=selection_layer,
            newlines=newlines,
            head=head,
            model=self.checkpoint.model,
        )


class VisionZipLlava(EfficientLlava):
    """`visionzip`: VisionZip's dominant + merged contextual tokens (visor_model.methods.visionzip); args budget=
    (required), dominant_ratio= (default 54/64, the official settings' share), score=cls|mean_received (default:
    cls if the encoder has a CLS token), merge=official|mean (default official)."""

    def check_args(self, budget: float | str | None = None, dominant_ratio: float | str | None = None,
                   score: str | None = None, merge: str = "official") -> None:
        from visor_model.methods.visionzip import DOMINANT_RATIO, VisionZipSettings

        if budget is None:
            raise ValueError("visionzip needs a budget, e.g. --model_args pretrained=DIR,budget=0.2")
        VisionZipSettings(budget, DOMINANT_RATIO if dominant_ratio is None else dominant_ratio, score, str(merge))

    def build_reducer(self, budget: float | str | None = None, dominant_ratio: float | str | None = None,
                      score: str | None = None, merge: str = "official") -> TokenReducer:
        from visor_model.methods.visionzip import DOMINANT_RATIO, VisionZip

        ratio = DOMINANT_RATIO if dominant_ratio is None else dominant_ratio
        return VisionZip(budget=budget, dominant_ratio=ratio, score=score, merge=str(merge),
                         model=self.checkpoint.model)


class PruMergeLlava(EfficientLlava):
    """`prumerge`: PruMerge / PruMerge+'s CLS-attention outliers (plus spatial samples) merged with their key
    neighbours (visor_model.methods.prumerge); args mode=budget|adaptive (default budget), budget= (required in
    budget mode), variant=plus|prumerge (default plus: PruMerge+), score=cls|mean_received (default: cls if the
    encoder has a CLS token), layer= (default: the layer after the projector's feature layer), neighbours= (default
    32), merge=official|mean (default official)."""

    def check_args(self, mode: str = "budget", budget: float | str | None = None, variant: str = "plus",
                   score: str | None = None, layer: int | str | None = None, neighbours: int | str = 32,
                   merge: str = "official") -> None:
        from visor_model.methods.prumerge import PruMergeSettings

        if str(mode) == "budget" and budget is None:
            raise ValueError("prumerge in budget mode needs a budget, e.g. --model_args pretrained=DIR,budget=0.2 "
                             "(or mode=adaptive for the paper's count)")
        PruMergeSettings(str(mode), budget, str(variant), score, layer, neighbours, str(merge))

    def build_reducer(self, mode: str = "budget", budget: float | str | None = None, variant: str = "plus",
                      score: str | None = None, layer: int | str | None = None, neighbours: int | str = 32,
                      merge: str = "official") -> TokenReducer:
        from visor_model.methods.prumerge import PruMerge

        return PruMerge(mode=str(mode), budget=budget, variant=str(variant), score=score, layer=layer,
                        neighbours=neighbours, merge=str(merge), model=self.checkpoint.model)


@dataclass
class DownsampleTokenCounts(VisualTokenCounts):
    """VisualTokenCounts plus the factor the image was resized by (`input_scale`; base_only: 1.0, one crop)."""

    input_scale: float | None = None

    FIELDS = ("input_scale",)

    @classmethod
    def from_record(cls, record, tokens=None, flops=None) -> DownsampleTokenCounts:
        base = VisualTokenCounts.from_record(record, tokens, flops)
        return cls(**{k: getattr(base, k) for k in base.__dataclass_fields__}, input_scale=record.input_scale)


class DownsampleLlava(EfficientLlava):
    """`downsample`: the base model on a lower-resolution input (visor_model.methods.downsample); args
    mode=base_only (the base crop only) or mode=scale with scale=S (a fixed factor) or budget=B (per image the
    largest size with at most B x the visual tokens)."""

    counts_class = DownsampleTokenCounts

    def check_args(self, mode: str | None = None, scale: float | str | None = None,
                   budget: float | str | None = None) -> None:
        from visor_model.methods.downsample import DownsampleSettings

        if mode is None:
            raise ValueError("downsample needs a mode: mode=base_only, or mode=scale with scale=S or budget=B")
        DownsampleSettings(str(mode), scale, budget)  # every bad combination fails before the checkpoint loads

    def build_reducer(self, mode: str | None = None, scale: float | str | None = None,
                      budget: float | str | None = None) -> TokenReducer:
        from visor_model.methods.downsample import Downsample

        return Downsample(mode=str(mode), scale=scale, budget=budget)
