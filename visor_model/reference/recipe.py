"""Train a reference LLaVA model from scratch on the synthetic benchmarks' train splits.

    python -m visor_model.reference.recipe --family llava_onevision --tasks resources/benchmarks/synth_* \
        --out resources/checkpoints/reference-ov --state resources/train_state/reference-ov

`--continue-from DIR` instead of `--family` trains an existing checkpoint further with the same recipe: the
continued-training control of VISOR's host (`continue_reference`).

The whole model (vision tower, projector, LLM) is trained at full compute with the same input pipeline that
evaluation uses (`visor_model.llava.runner`), on the answer tokens only. Progress and held-out accuracy are printed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from visor_model.examples import Example, answer_examples, exact_match, read_examples
from visor_model.files import replace_folder_atomically
from visor_model.llava.checkpoints import LoadedCheckpoint
from visor_model.llava.runner import VisionLanguageRunner, prompt_ids
from visor_model.methods.base import FullTokens, RandomDrop
from visor_model.reference import tasks
from visor_model.reference.models import (
    ReferenceConfig,
    build_reference_model,
    build_tokenizer,
)
from visor_model.train_loop import (
    ProgressLog,
    TrainConfig,
    batch_indices,
    learning_rate,
    resume_train_state,
    save_train_state,
    training_identity,
)


class EncodedExamples:
    """Training examples with prompts and answers tokenised once; images run through the image processor per
    batch. Caching processed pixels would hold every crop in float32 (a 384x384 crop is 1.7 MB: about 32 GB for
    the synthetic splits at LLaVA-OneVision's crop counts); the processor works per image (the batch only pads
    crops, which the vision tower never sees), so a batch's pixels are the same either way."""

    def __init__(self, examples: list[Example], tokenizer, image_processor, image_token_id: int):
        self.examples = examples
        self.image_processor = image_processor
        self.prompts = [prompt_ids(tokenizer, image_token_id, e.question) for e in examples]
        self.targets = [tokenizer(" " + e.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
                        for e in examples]

    def __len__(self):
        return len(self.examples)

    def batch(self, indices: list[int]):
        """(pixel_values [B, max_crops, 3, H, W], image_sizes [B, 2], prompts, targets) of the examples `indices`."""
        processed = self.image_processor([self.examples[i].image for i in indices], return_tensors="pt")
        return (processed["pixel_values"], processed["image_sizes"], [self.prompts[i] for i in indices],
                [self.targets[i] for i in indices])


def curriculum_weights(examples: list[Example], progress: float) -> torch.Tensor:
    """Sampling weights at a fraction `progress` of training. From scratch, a model learns to find a small
    marker among ~200 visual tokens only after big markers showed it where to look: for the first 30% of
    training marker examples enter only with markers of >= 10 px (the other tasks at a tenth of the weight),
    until 55% with >= 6 px, then all; marker examples are oversampled 3x from 30% on."""
    if progress < 0.3:
        return torch.tensor([
            (1.0 if (e.marker_size or 0) >= 10 else 0.0) if e.task == "synth_marker" else 0.1 for e in examples
        ])
    min_size = 6 if progress < 0.55 else 0
    return torch.tensor([
        1.0 if e.task != "synth_marker" else 3.0 * ((e.marker_size or 0) >= min_size) for e in examples
    ])


def training_loss(model, image_token_id: int, pixels, sizes, prompts, targets) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens of a batch, through the evaluation input pipeline."""
    from visor_model.llava.visual import encode_images, splice_prompts

    vision = encode_images(model, pixels, sizes)
    batch = splice_prompts(model.get_input_embeddings(), prompts, vision.images, image_token_id, targets)
    hidden = model.model.language_model(
        inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).last_hidden_state
    logits = model.lm_head(hidden[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels[:, 1:].flatten(), ignore_index=-100)


def accuracy(runner: VisionLanguageRunner, examples: list[Example], batch_size: int = 32) -> float:
    records = answer_examples(runner, examples, batch_size)
    return sum(exact_match(r.answer, e.answer) for r, e in zip(records, examples)) / len(examples)


def discrimination(loaded: LoadedCheckpoint, examples: dict[str, list[Example]], budget: float = 0.2,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """Accuracy per task at full compute and under random dropping to `budget`: the suite discriminates when
    the fine-grained task loses much and the coarse one little."""
    full = VisionLanguageRunner(loaded, FullTokens())
    dropped = VisionLanguageRunner(loaded, RandomDrop(budget, seed))
    figures = {}
    for task, task_examples in examples.items():
        at_full, at_budget = accuracy(full, task_examples), accuracy(dropped, task_examples)
        figures[task] = {"full": at_full, f"random_drop_{budget}": at_budget,
                         "loss_points": 100 * (at_full - at_budget)}
    return figures


def train_reference(
    family: str,
    task_dirs: list[Path],
    out_dir: Path,
    state_dir: Path,
    reference: ReferenceConfig,
    config: TrainConfig,
    val_per_task: int = 100,
) -> dict:
    """A reference model of `family` trained from scratch (seeded by config.seed)."""
    torch.set_num_threads(config.threads)
    tokenizer = build_tokenizer(tasks.vocabulary())
    model, image_processor = build_reference_model(reference, tokenizer, seed=config.seed)
    identity = training_identity(family=family, reference_config=reference, train_config=config,
                                 tasks=[d.name for d in task_dirs])
    return fit(model, tokenizer, image_processor, family, task_dirs, out_dir, state_dir, config, identity,
               {"reference_config": asdict(reference)}, val_per_task)


def continue_reference(
    base_dir: Path,
    task_dirs: list[Path],
    out_dir: Path,
    state_dir: Path,
    config: TrainConfig,
    base_sha256: str | None = None,
    val_per_task: int = 100,
) -> dict:
    """The continued-training control of a VISOR base: the base checkpoint (every weight) trained further with
    the same recipe (loss, data, curriculum) for `config.steps` more steps, so that what VISOR gains over its
    host can be told from what any further training gains."""
    from visor_model.llava.checkpoints import load_checkpoint, weights_sha256

    torch.set_num_threads(config.threads)
    base_sha256 = base_sha256 or weights_sha256(Path(base_dir))
    loaded = load_checkpoint(str(base_dir), None, "cpu", "float32", base_sha256)
    identity = training_identity(base_sha256=base_sha256, train_config=config, tasks=[d.name for d in task_dirs])
    return fit(loaded.model, loaded.tokenizer, loaded.image_processor, loaded.family, task_dirs, out_dir, state_dir,
               config, identity, {"control_of": str(base_dir), "base_sha256": base_sha256}, val_per_task)


def fit(model, tokenizer, image_processor, family: str, task_dirs: list[Path], out_dir: Path, state_dir: Path,
        config: TrainConfig, identity: dict, record: dict, val_per_task: int = 100) -> dict:
    """The recipe's training loop (resumable from `state_dir`, curriculum, answer-token loss), then the held-out
    discrimination check; writes the checkpoint folder `out_dir` (safetensors + training.json) atomically."""
    image_token_id = model.config.image_token_id
    train, val = [], {}
    for task_dir in task_dirs:
        task = task_dir.name
        train += read_examples(task_dir / "train.parquet", task)
        val[task] = read_examples(task_dir / "val.parquet", task)[:val_per_task]
    data = EncodedExamples(train, tokenizer, image_processor, image_token_id)
    print(f"{family}: {sum(p.numel() for p in model.parameters()):,} parameters, {len(data)} training examples",
          flush=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    start_step = resume_train_state(state_dir, model, optimizer, identity, "reference training")
    progress = ProgressLog(config.steps, config.log_every)
    started = time.time()
    losses = []
    model.train()
    for step in range(start_step, config.steps):
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        weights = curriculum_weights(train, step / config.steps)
        loss = training_loss(model, image_token_id, *data.batch(batch_indices(config, step, len(data), weights)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        progress.update(step, loss.item(), lr)
        losses.append([step + 1, round(loss.item(), 5)])
        if (step + 1) % config.save_every == 0 and step + 1 < config.steps:
            save_train_state(state_dir, model, optimizer, step + 1, identity)

    model.eval()
    loaded = LoadedCheckpoint(model, tokenizer, image_processor, family, out_dir, str(out_dir), None, "")
    figures = discrimination(loaded, val, seed=config.seed)
    for task, row in figures.items():
        print(f"held-out {task}: full {row['full']:.3f}, random_drop 20% {row['random_drop_0.2']:.3f} "
              f"({row['loss_points']:+.1f} points lost)", flush=True)
    record = {
        "family": family,
        **record,
        "train_config": asdict(config),
        "tasks": [d.name for d in task_dirs],
        "val_discrimination": figures,
        "train_seconds_this_run": round(time.time() - started, 1),
        "loss": losses if not start_step else None,  # per step; not kept across a resumed run
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=2))

    replace_folder_atomically(Path(out_dir), write)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["llava_onevision", "llava_next"], help="train a new reference model")
    parser.add_argument("--continue-from", type=Path, help="or: continue training this checkpoint (the control)")
    parser.add_argument("--tasks", nargs="+", required=True, type=Path, help="task folders from write_task")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    args = parser.parse_args()
    if (args.family is None) == (args.continue_from is None):
        parser.error("give exactly one of --family (a new model) and --continue-from (the control)")
    config = replace(TrainConfig(), steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                     warmup_steps=args.warmup_steps, seed=args.seed, threads=args.threads)
    if args.continue_from is not None:
        continue_reference(args.continue_from, args.tasks, args.out, args.state, config)
    else:
        train_reference(args.family, args.tasks, args.out, args.state, ReferenceConfig(family=args.family), config)


if __name__ == "__main__":
    main()
