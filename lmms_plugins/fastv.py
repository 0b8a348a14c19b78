"""lmms-eval model `fastv`: FastV visual-token pruning inside the LLM (see visor_model.methods.fastv).

    --model fastv --model_args pretrained=DIR,k=2,ratio=0.5            the paper's K=2, R=50%
    ... ,score=mean                                                    rank by the paper's formula (default: last)

Shared args as the other plugins: pretrained, revision, device, dtype, batch_size (lmms-eval --batch_size). Per-sample
token counts carry K, the visual tokens before (every layer < K) and after (layers >= K) the pruning, and the
per-sample FLOPs by term (`visor_model.efficiency.accounting`: each layer at its own length, the ranking at layer K-1
as `flops_llm_prefill_rank`).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmms_plugins.models import EfficientLlava, VisualTokenCounts
from visor_model.efficiency.accounting import FlopAccountant
from visor_model.methods.base import FullTokens
from visor_model.methods.fastv import FastV, FastVConfig, FastVRunner


@dataclass
class FastVTokenCounts(VisualTokenCounts):
    """VisualTokenCounts plus FastV's pruning of one sample (`visual_tokens_kept` there: the tokens that entered the
    LLM, all of them; the ones left after layer K are here)."""

    fastv_k: int | None = None
    visual_tokens_after_k: int | None = None  # patch tokens in layers K..
    llm_visual_tokens_after_k: int | None = None  # the same with the newline tokens

    FIELDS = ("fastv_k", "visual_tokens_after_k", "llm_visual_tokens_after_k")

    @classmethod
    def from_record(cls, record, tokens=None, flops=None) -> FastVTokenCounts:
        base = VisualTokenCounts.from_record(record, tokens, flops)
        return cls(**{k: getattr(base, k) for k in base.__dataclass_fields__}, fastv_k=record.fastv_k,
                   visual_tokens_after_k=record.visual_tokens_after_k,
                   llm_visual_tokens_after_k=record.llm_visual_tokens_after_k)


class FastVLlava(EfficientLlava):
    """`fastv`: args k=K (layers on the whole prompt, 1 <= K < LLM layers), ratio=R (share of visual patch tokens
    dropped after them, in [0, 1)), score=last|mean."""

    counts_class = FastVTokenCounts

    def check_args(self, k=None, ratio=None, score: str = "last") -> None:
        """k and ratio are required and checked before the checkpoint is loaded (K's upper bound after)."""
        if k is None or ratio is None:
            raise ValueError("fastv needs k=K and ratio=R, e.g. --model_args pretrained=DIR,k=2,ratio=0.5")
        FastVConfig(k, ratio, str(score))

    def build_runner(self, k=None, ratio=None, score: str = "last") -> FastVRunner:
        self.reducer = FullTokens()
        self.fastv = FastV(self.checkpoint.model, FastVConfig(k, ratio, str(score)))
        return FastVRunner(self.checkpoint, self.fastv, self.device_name)

    @property
    def label(self) -> str:
        """fastv[K=2,R=0.5] (with the score when it is not the default)."""
        config = self.fastv.config
        return f"fastv[K={config.k},R={config.ratio:g}{'' if config.score == 'last' else ',' + config.score}]"

    def build_accountant(self) -> FlopAccountant:
        return FlopAccountant.for_model(self.checkpoint.model, self.reducer, self.fastv.config)
