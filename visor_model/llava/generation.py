"""Greedy decoding with a KV cache over an already spliced batch (prefill once, then one token per step).

Each row stops on its own (`StoppingCriteria`): at an end-of-sequence token (not kept), when its decoded text
contains one of its stop strings (lmms-eval's `until`; the token that completed it is kept, the text is cut
by `trim_at_stop`), or after its own `max_new_tokens`. Decoding ends when every row has stopped, so a row's
`generated` ids are exactly the tokens it needed and no step runs for a batch whose rows are all done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from visor_model.llava.visual import SplicedBatch

EOS, STOP, LENGTH = "eos", "stop", "length"  # finish reasons: end-of-sequence token, stop string, token limit


def trim_at_stop(text: str, stop_strings: Iterable[str]) -> str:
    """`text` up to the first occurrence of any stop string (lmms-eval's `until`), stop string excluded."""
    cut = min((text.index(stop) for stop in stop_strings if stop and stop in text), default=len(text))
    return text[:cut]


@dataclass(frozen=True)
class StoppingCriteria:
    """When each row of a batch stops.

    max_new_tokens: per row; eos_token_ids: ids that end any row; stop_strings: per row (empty strings are
    ignored); decode: token ids -> text, the decoding the answer uses (needed when there are stop strings)."""

    max_new_tokens: tuple[int, ...]
    eos_token_ids: frozenset[int] = frozenset()
    stop_strings: tuple[tuple[str, ...], ...] | None = None
    decode: Callable[[list[int]], str] | None = None

    @classmethod
    def for_batch(cls, batch_size: int, max_new_tokens: int | Sequence[int],
                  eos_token_id: int | Iterable[int] | None = None,
                  stop_strings: Sequence[Sequence[str]] | None = None,
                  decode: Callable[[list[int]], str] | None = None) -> StoppingCriteria:
        """`max_new_tokens` one limit for every row or one per row; `eos_token_id` an id, several or None."""
        limits = [max_new_tokens] * batch_size if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(limits) != batch_size or any(int(n) < 1 for n in limits):
            raise ValueError(f"max_new_tokens must be one positive limit or one per row ({batch_size}), "
                             f"got {max_new_tokens!r}")
        if eos_token_id is None:
            eos = frozenset()
        elif isinstance(eos_token_id, int):
            eos = frozenset([eos_token_id])
        else:
            eos = frozenset(int(i) for i in eos_token_id)
        stops = None
        if stop_strings is not None:
            if len(stop_strings) != batch_size:
                raise ValueError(f"stop_strings must have one list per row ({batch_size}), got {len(stop_strings)}")
            stops = tuple(tuple(s for s in row if s) for row in stop_strings)
            if any(stops) and decode is None:
                raise ValueError("stop strings need decode (token ids -> text) to be found in the output")
            stops = stops if any(stops) else None
        return cls(tuple(int(n) for n in limits), eos, stops, decode)

    def select(self, rows: Sequence[int]) -> StoppingCriteria:
        """The criteria of a sub-batch (rows of this batch, in that order)."""
        return StoppingCriteria(
            tuple(self.max_new_tokens[r] for r in rows), self.eos_token_ids,
            None if self.stop_strings is None else tuple(self.stop_strings[r] for r in rows), self.decode,
        )


class GreedyRows:
    """The tokens of each row so far and why it stopped (None while it runs)."""

    def __init__(self, stopping: StoppingCriteria):
        self.stopping = stopping
        self.generated: list[list[int]] = [[] for _ in stopping.max_new_tokens]
        self.finish_reasons: list[str | None] = [None] * len(stopping.max_new_tokens)

    def append(self, next_ids: torch.Tensor) -> bool:
        """Take each running row's next token (an eos token stops the row instead); returns whether all stopped."""
        stopping = self.stopping
        for row, token in enumerate(next_ids.tolist()):
            if self.finish_reasons[row] is not None:
                continue
            if token in stopping.eos_token_ids:
                self.finish_reasons[row] = EOS
                continue
            self.generated[row].append(token)
            stops = stopping.stop_strings[row] if stopping.stop_strings is not None else ()
            if stops and any(stop in stopping.decode(self.generated[row]) for stop in stops):
                self.finish_reasons[row] = STOP
            elif len(self.generated[row]) >= stopping.max_new_tokens[row]:
                self.finish_reasons[row] = LENGTH
        return all(reason is not None for reason in self.finish_reasons)


@dataclass
class GreedyOutput:
    token_ids: list[list[int]]  # generated ids per row, eos excluded
    finish_reasons: list[str]  # per row: EOS, STOP or LENGTH
    prefill_tokens: int  # padded prompt length T of the batch


@torch.no_grad()
def greedy_generate(model, batch: SplicedBatch, max_new_tokens: int | Sequence[int],
                    eos_token_id: int | Iterable[int] | None, stop_strings: Sequence[Sequence[str]] | None = None,
                    decode: Callable[[list[int]], str] | None = None) -> GreedyOutput:
    """Greedy generation for a left-padded batch with the LLaVA model's own language model and LM head
    (arguments as `StoppingCriteria.for_batch`)."""
    language_model, lm_head = model.model.language_model, model.lm_head
    rows = GreedyRows(StoppingCriteria.for_batch(batch.inputs_embeds.shape[0], max_new_tokens, eos_token_id,
                                                 stop_strings, decode))
    cache = DynamicCache(config=language_model.config)
    attention_mask = batch.attention_mask
    position_ids = batch.position_ids
    hidden = language_model(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state
    next_position = position_ids[:, -1:] + 1
    while True:
        next_ids = lm_head(hidden[:, -1]).argmax(dim=-1)  # [B]
        if rows.append(next_ids):
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        hidden = language_model(
            inputs_embeds=model.model.get_input_embeddings()(next_ids[:, None]),
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        next_position = next_position + 1
    return GreedyOutput(token_ids=rows.generated, finish_reasons=rows.finish_reasons,
                        prefill_tokens=batch.inputs_embeds.shape[1])
