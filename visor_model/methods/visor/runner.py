"""VISOR at inference: the batched runner with a fixed configuration or the policy, and its per-sample record."""

from __future__ import annotations

from dataclasses import dataclass

from visor_model.llava.checkpoints import LoadedCheckpoint
from visor_model.llava.runner import SampleRecord, VisionLanguageRunner, eos_token_ids
from visor_model.methods.base import FullTokens, check_fraction
from visor_model.methods.visor.modeling import VisorModel


class VisorRunner(VisionLanguageRunner):
    """`VisionLanguageRunner` whose LLM is a VISOR model with a fixed configuration or a policy threshold."""

    def __init__(self, loaded: LoadedCheckpoint, visor: VisorModel, reducer=None, device: str = "cpu",
                 active=None, threshold: float | None = None):
        super().__init__(loaded, reducer or FullTokens(), device)
        self.visor = visor
        self.active = active
        self.threshold = None if threshold is None else check_fraction(threshold, "threshold")

    def decode(self, batch, max_new_tokens, until):
        return self.visor.generate(batch, max_new_tokens, eos_token_ids(self.loaded.tokenizer, self.model),
                                   active=self.active, threshold=self.threshold, stop_strings=until,
                                   decode=self.decode_text)

    def record(self, row, fields, decoded) -> "VisorSampleRecord":
        return VisorSampleRecord(
            **fields,
            sa_layers=len(decoded.configurations[row]),
            configuration=decoded.configurations[row],
            roles=decoded.roles[row],
            llm_visual_tokens=decoded.n_visual[row],
            llm_text_tokens=decoded.n_text[row],
            router_probabilities=None if decoded.probabilities is None else decoded.probabilities[row],
        )


@dataclass
class VisorSampleRecord(SampleRecord):
    sa_layers: int = 0  # SA layers that ran
    configuration: tuple[int, ...] = ()  # their indices
    roles: tuple[str, ...] = ()  # "sa" | "ca" (cross-attention, then the host layer on text) | "text" per layer
    llm_visual_tokens: int = 0  # visual tokens entering the VISOR layers (newline tokens included)
    llm_text_tokens: int = 0  # text tokens of the prompt
    router_probabilities: list[float] | None = None
