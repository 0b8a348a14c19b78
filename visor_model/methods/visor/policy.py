"""VISOR's policy: the labels (which viable configuration suffices for a sample: `sufficient`,
`cheapest_sufficing`), the router's training on them (`train_router`) and the compute it then spends
(`expected_compute`)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from visor_model.examples import Example
from visor_model.llava.runner import VisionLanguageRunner, prompt_ids
from visor_model.methods.base import FullTokens, check_fraction, stable_seed
from visor_model.methods.visor.evaluation import run_configuration
from visor_model.methods.visor.modeling import (
    ROUTER_OUTPUTS,
    VisorModel,
    choose_configuration,
)


def configuration_answers(loaded, model: VisorModel, examples: list[Example], batch_size: int = 32
                          ) -> list[list[str]]:
    """Answers [n_viable][N] of every viable configuration (cheapest first) on `examples`."""
    return [[r.answer for r in run_configuration(loaded, model, examples, active, batch_size)]
            for active in model.viable]


def sufficient(scores: torch.Tensor, reference: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """scores [N, n_viable] (cheapest first), reference [N] -> 0/1 labels: configuration c suffices for sample i
    when its score >= the reference's score on it minus `tolerance`."""
    return (scores >= reference[:, None] - tolerance - 1e-9).float()


def cheapest_sufficing(labels: torch.Tensor) -> torch.Tensor:
    """labels [N, n_viable] (cheapest first) -> [N]: the index of the cheapest sufficing configuration, the largest
    where none suffices (the policy's fallback). The cross-entropy router's target."""
    n = labels.shape[1]
    index = torch.arange(n).expand_as(labels)
    return torch.where(labels.bool(), index, n).min(dim=1).values.clamp(max=n - 1)


def routing_features_batches(loaded, model: VisorModel, examples: list[Example], batch_size: int):
    """Spliced prompts of the labelling examples (vision computed once, frozen)."""
    runner = VisionLanguageRunner(loaded, FullTokens(), str(loaded.model.device))
    batches = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            pixels, sizes = runner.process_images([e.image for e in chunk])
            prompts = [prompt_ids(loaded.tokenizer, model.base.config.image_token_id, e.question) for e in chunk]
            _, kept = runner.visual_tokens(pixels, sizes, [str(i) for i in range(len(chunk))])
            batches.append(runner.splice(prompts, kept))
    return batches


def train_router(loaded, model: VisorModel, examples: list[Example], labels: torch.Tensor, steps: int = 200,
                 lr: float = 3e-3, batch_size: int = 32, seed: int = 0, loss: str = "ce") -> dict:
    """Training of the routing token and router MLP on the labels [N, n_viable], host and VISOR layers frozen:
    BCE on every configuration's sufficiency (`loss="bce"`), or cross-entropy on the cheapest sufficing one
    (`"ce"`); `model.router_output` is set to match (how `route` turns logits into probabilities)."""
    r = model._require_router()
    for p in model.parameters():
        p.requires_grad_(False)
    params = [model.visor.routing_token, *model.visor.router.parameters()]
    for p in params:
        p.requires_grad_(True)
    model.router_output = ROUTER_OUTPUTS[loss]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batches = routing_features_batches(loaded, model, examples, batch_size)
    offsets = [i * batch_size for i in range(len(batches))]
    targets = labels if loss == "bce" else cheapest_sufficing(labels)
    started = time.time()
    losses = []
    for step in range(steps):
        generator = torch.Generator().manual_seed(stable_seed(seed, "router", step))
        k = int(torch.randint(len(batches), (1,), generator=generator))
        batch, target = batches[k], targets[offsets[k] : offsets[k] + batches[k].inputs_embeds.shape[0]]
        state, _ = model.start(batch, use_cache=False, routing=True)
        state = model.run_layers(state, 0, r, ())
        logits = model.router_logits(state)
        if loss == "bce":
            value = F.binary_cross_entropy_with_logits(logits, target.to(logits.device, logits.dtype))
        else:
            value = F.cross_entropy(logits, target.to(logits.device))
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        losses.append(value.item())
        if (step + 1) % 50 == 0:
            print(f"router step {step + 1}/{steps} {loss} {sum(losses[-50:]) / len(losses[-50:]):.4f}", flush=True)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return {"router_steps": steps, "router_loss": loss,
            "router_final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
            "router_seconds": round(time.time() - started, 1), "label_rate": labels.mean(0).tolist()}


def expected_compute(model: VisorModel, probabilities: torch.Tensor, flops: list[float], threshold: float) -> float:
    """Mean FLOPs of the configurations the policy picks at `threshold` (flops[c] per viable configuration)."""
    chosen = choose_configuration(probabilities, check_fraction(threshold, "threshold"))
    return sum(flops[c] for c in chosen) / max(1, len(chosen))

