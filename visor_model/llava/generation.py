"""Greedy decoding with a KV cache over an already spliced batch (prefill once, then one token per step)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from visor_model.llava.visual import SplicedBatch


def record_greedy_step(next_ids: torch.Tensor, generated: list[list[int]], finished: torch.Tensor,
                       eos_token_id: int | None) -> bool:
    """Append each unfinished row's token (eos finishes the row instead); returns whether all rows are done."""
    for row, token in enumerate(next_ids.tolist()):
        if finished[row]:
            continue
        if eos_token_id is not None and token == eos_token_id:
            finished[row] = True
        else:
            generated[row].append(token)
    return bool(finished.all())


@dataclass
class GreedyOutput:
    token_ids: list[list[int]]  # generated ids per row, eos excluded
    prefill_tokens: int  # padded prompt length T of the batch


@torch.no_grad()
def greedy_generate(model, batch: SplicedBatch, max_new_tokens: int, eos_token_id: int | None) -> GreedyOutput:
    """Greedy generation for a left-padded batch with the LLaVA model's own language model and LM head."""
    language_model, lm_head = model.model.language_model, model.lm_head
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
    batch_size = hidden.shape[0]
    finished = torch.zeros(batch_size, dtype=torch.bool, device=hidden.device)
    generated: list[list[int]] = [[] for _ in range(batch_size)]
    next_position = position_ids[:, -1:] + 1
    for step in range(max_new_tokens):
        next_ids = lm_head(hidden[:, -1]).argmax(dim=-1)  # [B]
        if record_greedy_step(next_ids, generated, finished, eos_token_id) or step + 1 == max_new_tokens:
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
    return GreedyOutput(token_ids=generated, prefill_tokens=batch.inputs_embeds.shape[1])
