"""lmms-eval model classes for the efficiency methods. Thin: every method's logic lives in `visor_model`.

Each class turns lmms-eval requests into batches for `visor_model.runner.VisionLanguageRunner` and returns
`GenerationResult`s whose token counts carry the per-sample accounting (visual tokens before and after
reduction, prefill length), so it lands in lmms-eval's per-sample log; means go to `results["throughput"]`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from tqdm import tqdm

from visor_model.checkpoints import load_checkpoint
from visor_model.methods import FullTokens, RandomDrop, TokenReducer
from visor_model.runner import SampleRecord, VisionLanguageRunner


@dataclass
class VisualTokenCounts(TokenCounts):
    """lmms-eval's token counts plus the visual-token accounting of one sample."""

    visual_tokens: int | None = None
    visual_tokens_kept: int | None = None
    newline_tokens_kept: int | None = None
    crops: int | None = None

    def to_dict(self):
        counts = super().to_dict()
        for name in ("visual_tokens", "visual_tokens_kept", "newline_tokens_kept", "crops"):
            counts[name] = getattr(self, name)
        return counts

    @classmethod
    def from_record(cls, record: SampleRecord) -> "VisualTokenCounts":
        return cls(
            input_tokens=record.prompt_tokens,
            output_tokens=record.generated_tokens,
            visual_tokens=record.visual_tokens,
            visual_tokens_kept=record.visual_tokens_kept,
            newline_tokens_kept=record.newline_tokens_kept,
            crops=record.crops,
        )


def pick_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class EfficientLlava(lmms):
    """Shared model args: pretrained (folder or hub id), revision, device, dtype, batch_size."""

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
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.max_new_tokens_override = int(max_new_tokens) if max_new_tokens else None
        self.device_name = pick_device(device)
        self.checkpoint = load_checkpoint(str(pretrained), revision or None, self.device_name, dtype)
        self.reducer = self.build_reducer(**method_args)
        self.runner = VisionLanguageRunner(self.checkpoint, self.reducer, self.device_name)

    def build_reducer(self, **method_args) -> TokenReducer:
        raise NotImplementedError

    def clean(self):
        """lmms-eval deletes every nn.Module attribute after a run; the runner owns the model, keep it."""

    def generate_until(self, requests) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        # Sort by prompt length so that batches pad little; answers are put back in request order.
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].args[0]))
        totals = {"visual_tokens": 0, "visual_tokens_kept": 0, "prompt_tokens": 0}
        generated, started = 0, time.perf_counter()
        progress = tqdm(total=len(requests), desc=f"{self.reducer.name}", disable=self.rank != 0)
        for start in range(0, len(order), self.batch_size_per_gpu):
            indices = order[start : start + self.batch_size_per_gpu]
            images, questions, keys, budgets, until = [], [], [], [], []
            for i in indices:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = requests[i].args
                visuals = [v for v in doc_to_visual(self.task_dict[task][split][doc_id]) if v is not None]
                if len(visuals) != 1:
                    raise ValueError(f"{task} doc {doc_id}: expected exactly one image, got {len(visuals)}")
                images.append(visuals[0])
                questions.append(context)
                keys.append(f"{task}/{split}/{doc_id}")
                budgets.append(self.max_new_tokens_override or int(gen_kwargs.get("max_new_tokens", 16)))
                stops = gen_kwargs.get("until") or []
                until.append([stops] if isinstance(stops, str) else list(stops))
            records = self.runner.generate(images, questions, keys, budgets, until)
            for i, record in zip(indices, records):
                results[i] = GenerationResult(text=record.answer, token_counts=VisualTokenCounts.from_record(record))
                totals["visual_tokens"] += record.visual_tokens
                totals["visual_tokens_kept"] += record.visual_tokens_kept
                totals["prompt_tokens"] += record.prompt_tokens
                generated += record.generated_tokens
            progress.update(len(indices))
        progress.close()
        elapsed = time.perf_counter() - started
        n = max(1, len(requests))
        log_metrics(
            total_elapsed_time=elapsed,
            total_gen_tokens=generated,
            avg_speed=generated / elapsed if elapsed > 0 else 0.0,
            additional_metrics={key: value / n for key, value in totals.items()},
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
