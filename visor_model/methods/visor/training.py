"""Universal training of VISOR, viable configurations, policy labels and router training, as three stages.

    python -m visor_model.methods.visor.training --base /tmp/train/llava_onevision \
        --tasks /tmp/bench/synth_background /tmp/bench/synth_shape /tmp/bench/synth_marker \
        --out resources/checkpoints/visor-ov --state resources/train_state/visor-ov

Each stage reads and writes files, so the workflow runs them as separate jobs (train_visor -> label_policy ->
train_policy); `train_visor` runs all three in sequence for users of the Python API and the CLI.

1. `train_universal_checkpoint` (rule train_visor). Universal training: stage 1 trains only the new modules
   (CA blocks with their gates, positional conv) with the host frozen; stage 2 fine-tunes everything (the VISOR
   modules only with `stage2_freeze_host`). Each step runs one configuration, drawn uniformly (seeded by
   (seed, step), like the batch) from the stage's pool (`stage_pool`): in the paper's order (`order="paper"`,
   the default) the largest configuration in stage 1, then the viable configurations are searched (below) and
   stage 2 samples only them; in joint order (`"joint"`) the whole family (`VisorConfig.family`: the evenly
   spread k-subset of SA candidates for k = 0..n) in both stages, the viable search at the end. Batches follow
   the host's curriculum (`curriculum`). Loss: next-token cross-entropy on the answer tokens. Every
   `eval_every` steps every family member's greedy accuracy on the first `curve_per_task` val rows per task is
   recorded, with the loss of every step and the host's accuracy on the same rows before training: the
   training curve, saved in the checkpoint's record. Resumable: the state (weights, AdamW moments, step,
   history, viable configurations) is saved every `save_every` steps with `visor_model.train_loop.save_train_state`;
   a state made with another configuration or base checkpoint is discarded, not resumed. The viable search:
   every family member is evaluated on the first `viable_per_task` rows per task of the held-out `val` split
   (greedy exact-match accuracy) and costed (mean analytic LLM prefill FLOPs over the same samples); those on
   the accuracy-FLOP Pareto frontier are kept, cheapest first (plus the largest one). Output: a VISOR
   checkpoint folder without a router (the "universal" checkpoint).
2. `label_policy` (rule label_policy). Every viable configuration is run on the labelling split (the next
   `label_per_task` val rows per task, disjoint from those that picked the viable configurations); a
   configuration suffices for a sample when its score >= the reference's score on it - `label_tolerance`, the
   reference being the original host at full compute (`label_reference="full"`, the paper) or the largest viable
   configuration (`"largest"`). Output: a CSV table, a row per sample (task, row, target, answer / score /
   suffices per configuration, and the full model's answer and score).
3. `train_policy` (rule train_policy). The router (routing token + MLP) is trained on the labels, host and VISOR
   layers frozen (`train_router`): cross-entropy on the cheapest sufficing configuration (`router_loss="ce"`, the
   paper) or BCE on every configuration's sufficiency (`"bce"`). Output: the final VISOR checkpoint folder. With
   a single viable configuration (or no router layer) the final checkpoint has no router.

A checkpoint folder holds the host checkpoint (save_pretrained), visor.safetensors and visor_config.json.
Every output is written atomically (temporary name, then rename). Beside this module: the data
(`visor_model.methods.visor.data`), the evaluation of configurations and the viable search (`evaluation`), the
policy's labels and router training (`policy`).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from visor_model.devices import resolve_device
from visor_model.examples import Example, answer_examples, exact_match
from visor_model.files import write_atomically
from visor_model.llava.checkpoints import load_checkpoint
from visor_model.llava.runner import VisionLanguageRunner
from visor_model.llava.visual import encode_images, splice_prompts
from visor_model.methods.base import FullTokens, stable_seed
from visor_model.methods.visor.config import (
    DeviceConfig,
    PolicyConfig,
    UniversalConfig,
    VisorConfig,
    add_arguments,
    arguments_options,
    visor_options,
)
from visor_model.methods.visor.data import examples_at, load_hf_examples, read_split, split_rows
from visor_model.methods.visor.evaluation import evaluate_family, host_accuracy, viable_configurations
from visor_model.methods.visor.modeling import (
    VisorModel,
    load_visor,
    save_visor,
)
from visor_model.methods.visor.policy import configuration_answers, sufficient, train_router
from visor_model.reference.recipe import EncodedExamples, curriculum_weights
from visor_model.train_loop import (
    ProgressLog,
    TrainConfig,
    batch_indices,
    learning_rate,
    resume_train_state,
    save_train_state,
    training_identity,
)


def sample_configuration(pool: list[tuple[int, ...]], seed: int, step: int) -> tuple[int, ...]:
    """The configuration of step `step`: uniform over `pool`, seeded by (seed, step) like the batch."""
    generator = torch.Generator().manual_seed(stable_seed(seed, "configuration", step))
    return pool[int(torch.randint(len(pool), (1,), generator=generator))]


def stage_pool(model: VisorModel, config: UniversalConfig, stage: int) -> list[tuple[int, ...]]:
    """What a step of `stage` samples from: the whole family in joint order; in the paper's order the largest
    configuration in stage 1 and the viable ones (found between the stages) in stage 2."""
    family = model.config.family()
    if config.order == "joint":
        return family
    return [family[-1]] if stage == 1 else list(model.viable)



# ----------------------------------------------------------------------------------------------------------
# universal training


def visor_loss(model: VisorModel, image_token_id: int, pixels, sizes, prompts, targets, active,
               train_vision: bool) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens under configuration `active` (pixels on any device: moved to
    the model's device and dtype)."""
    base = model.base
    weight = base.get_input_embeddings().weight
    with torch.set_grad_enabled(train_vision and torch.is_grad_enabled()):
        vision = encode_images(base, pixels.to(weight.device, weight.dtype), sizes)
    batch = splice_prompts(base.get_input_embeddings(), prompts, vision.images, image_token_id, targets)
    logits, layout = model.text_logits(batch, active)  # [B, Tt, V]
    labels = batch.labels.gather(1, layout.text_index).masked_fill(~layout.text_valid, -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def set_stage(model: VisorModel, stage: int, freeze_host: bool = False) -> None:
    """Stage 1: only CA blocks and the positional conv train; stage 2: everything but the router (the VISOR
    modules only with `freeze_host`)."""
    for p in model.base.parameters():
        p.requires_grad_(stage == 2 and not freeze_host)
    for name, p in model.visor.named_parameters():
        p.requires_grad_(not name.startswith(("router", "routing_token")))


def universal_stage(config: UniversalConfig, step: int) -> tuple[int, TrainConfig]:
    """(stage number, TrainConfig whose schedule applies) at global step `step` of universal training."""
    if step < config.stage1_steps:
        return 1, TrainConfig(steps=config.stage1_steps, batch_size=config.batch_size, learning_rate=config.stage1_lr,
                              warmup_steps=config.warmup_steps, grad_clip=config.grad_clip, seed=config.seed)
    return 2, TrainConfig(steps=config.stage2_steps, batch_size=config.batch_size, learning_rate=config.stage2_lr,
                          warmup_steps=config.warmup_steps, grad_clip=config.grad_clip, seed=config.seed)


def train_universal(model: VisorModel, data, image_token_id: int, config: UniversalConfig,
                    state_dir: Path, stop_after: int | None = None, identity: dict | None = None,
                    search_viable=None, validate=None) -> dict:
    """Runs (or resumes) universal training; `stop_after` ends this call after that many steps (interruption).
    `data`: EncodedExamples, or a function returning them (called only if steps remain). In the paper's order
    `search_viable()` (-> {"viable": [...], "evaluated": [...]}) runs when stage 1 ends; its viable
    configurations are set on the model and saved with the training state. `validate(step, stage)` (-> rows)
    runs every `config.eval_every` steps. A saved state whose configuration (or `identity`: e.g. the base
    checkpoint's hash) differs from this run's is discarded. Returns the timing and the training history:
    loss per step ([step, stage, loss]), the validation rows and the viable search."""
    state_dir = Path(state_dir)
    trainable = [p for n, p in model.named_parameters() if not n.startswith(("visor.router", "visor.routing_token"))]
    optimizer = torch.optim.AdamW(trainable, lr=config.stage1_lr, weight_decay=0.0)
    extra = training_identity(universal_config=config, **(identity or {}))
    saved = json.loads((state_dir / "state.json").read_text()) if (state_dir / "state.json").is_file() else {}
    if saved.get("viable"):  # found between the stages: the saved state has the router head that set_viable adds
        model.set_viable([tuple(v) for v in saved["viable"]])
    start_step = resume_train_state(state_dir, model, optimizer, extra, "VISOR training")
    history = saved["history"] if start_step else {"loss": [], "validation": [], "viable_search": None}
    if not start_step and model.viable:  # the saved state was discarded: start without viable configurations
        model.viable, model.visor.router = [], None
    if callable(data):
        data = data() if start_step < config.steps else None
    progress = ProgressLog(config.steps, config.log_every)
    started, done = time.time(), 0

    def save(step: int) -> None:
        save_train_state(state_dir, model, optimizer, step, {
            **extra, "history": history, "viable": None if not model.viable else [list(v) for v in model.viable]})

    model.train()
    for step in range(start_step, config.steps):
        if stop_after is not None and done >= stop_after:
            break
        if config.order == "paper" and step == config.stage1_steps and not model.viable:
            if search_viable is None:
                raise ValueError("the paper's order searches the viable configurations after stage 1: pass "
                                 "search_viable (or use order='joint')")
            model.eval()
            history["viable_search"] = search = json.loads(json.dumps(search_viable()))  # as saved and resumed
            model.set_viable(search["viable"])
            model.train()
            save(step)
        stage, schedule = universal_stage(config, step)
        set_stage(model, stage, config.stage2_freeze_host)
        local = step if stage == 1 else step - config.stage1_steps
        lr = learning_rate(schedule, local)
        for group in optimizer.param_groups:
            group["lr"] = lr
        active = sample_configuration(stage_pool(model, config, stage), config.seed, step)
        weights = curriculum_weights(data.examples, local / schedule.steps) if config.curriculum else None
        pixels, sizes, prompts, targets = data.batch(batch_indices(schedule, step, len(data), weights))
        loss = visor_loss(model, image_token_id, pixels, sizes, prompts, targets, active,
                          train_vision=stage == 2 and not config.stage2_freeze_host)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in trainable if p.requires_grad], config.grad_clip)
        optimizer.step()
        progress.update(step, loss.item(), lr)
        history["loss"].append([step + 1, stage, round(loss.item(), 5)])
        done += 1
        if validate is not None and config.eval_every and (
                (step + 1) % config.eval_every == 0 or step + 1 in (config.stage1_steps, config.steps)):
            model.eval()
            history["validation"] += validate(step + 1, stage)
            model.train()
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps or (
                stop_after is not None and done >= stop_after):
            save(step + 1)
    model.eval()
    elapsed = time.time() - started
    return {"steps_this_run": done, "seconds_this_run": round(elapsed, 1),
            "seconds_per_step": round(elapsed / max(1, done), 3), "history": history}



# ----------------------------------------------------------------------------------------------------------
# the whole workflow


def build_visor(base_dir: str, visor_config: dict | None = None, device: DeviceConfig = DeviceConfig(),
                weights_sha256: str | None = None):
    loaded = load_checkpoint(str(base_dir), None, resolve_device(device.device), device.dtype, weights_sha256)
    n_layers = loaded.model.model.language_model.config.num_hidden_layers
    model = VisorModel(loaded.model, VisorConfig(n_layers=n_layers, **(visor_config or {})))
    return loaded, model


def configuration_name(active) -> str:
    """Column suffix of a configuration in the labels table: its number of SA layers (unique in the family)."""
    return f"sa{len(active)}"


def train_universal_checkpoint(base_dir: str, task_dirs: list[Path], out_dir: Path, state_dir: Path,
                               config: UniversalConfig, visor_config: dict | None = None,
                               policy: PolicyConfig = PolicyConfig(), train_examples: list[Example] | None = None,
                               stop_after: int | None = None, device: DeviceConfig = DeviceConfig(),
                               base_sha256: str | None = None, budget: dict | None = None) -> dict | None:
    """Stage 1 (rule train_visor): universal training (resumable from `state_dir`) on `train_examples`, else
    `config.train_data`, else the tasks' train splits, with the viable configurations searched on the first
    `viable_per_task` val rows per task (between the stages in the paper's order, after them in joint order);
    writes the VISOR checkpoint folder `out_dir` without a router. Its record holds the training history (loss
    per step, validation accuracy per configuration and task every `eval_every` steps), the host's accuracy on
    the same validation rows and every family member's final validation accuracy. `base_sha256`: the base's
    recorded weights hash (hashed here when not given); `budget`: the workflow's name and fraction of the steps
    (visor.budgets), recorded (default full). Returns the record, or None when `stop_after` interrupted the training
    on purpose."""
    from visor_model.llava.checkpoints import weights_sha256

    torch.set_num_threads(config.threads)
    base_sha256 = base_sha256 or weights_sha256(Path(base_dir))
    loaded, model = build_visor(base_dir, visor_config, device, base_sha256)
    image_token_id = loaded.model.config.image_token_id
    n_new = sum(p.numel() for p in model.visor.parameters())
    tasks = [Path(d).name for d in task_dirs]
    print(f"VISOR on {base_dir}: roles (all candidates) {model.config.roles(model.config.sa_candidates)}, "
          f"{n_new:,} new parameters, order {config.order}", flush=True)

    def encoded() -> EncodedExamples:
        if train_examples is not None:
            train = train_examples
        elif config.train_data is not None:
            train = load_hf_examples(config.train_data)
        else:
            train = read_split(task_dirs, "train")
        print(f"{len(train)} training examples", flush=True)
        return EncodedExamples(train, loaded.tokenizer, loaded.image_processor, image_token_id)

    viable_rows = read_split(task_dirs, "val", policy.viable_per_task)
    curve_rows = read_split(task_dirs, "val", min(config.curve_per_task, policy.viable_per_task))
    # the host before any VISOR training (stage 2 changes its weights): the quality gate's reference
    host = {"curve": host_accuracy(loaded, curve_rows, policy.inference_batch_size),
            "viable": host_accuracy(loaded, viable_rows, policy.inference_batch_size)}

    def validate(step: int, stage: int) -> list[dict]:
        return [{"step": step, "stage": stage, "configuration": f"sa{point['sa_layers']}", "benchmark": task,
                 "accuracy": accuracy, "n": sum(e.task == task for e in curve_rows)}
                for point in evaluate_family(loaded, model, curve_rows, policy.inference_batch_size)
                for task, accuracy in point["task_accuracy"].items()]

    def search_viable() -> dict:
        return viable_configurations(loaded, model, viable_rows, policy.inference_batch_size)

    identity = {"visor_config": model.config.to_dict(), "base_sha256": base_sha256,
                "train_data": "examples given" if train_examples is not None else tasks}
    timing = train_universal(model, encoded, image_token_id, config, state_dir, stop_after, identity,
                             search_viable, validate)
    history = timing.pop("history")
    print(f"universal training: {timing}", flush=True)
    if config.steps and json.loads((Path(state_dir) / "state.json").read_text())["step"] < config.steps:
        return None  # interrupted on purpose (stop_after)
    for p in model.parameters():
        p.requires_grad_(False)

    started = time.time()
    final = viable_configurations(loaded, model, viable_rows, policy.inference_batch_size)
    if config.order == "joint" or not model.viable:  # the paper's order keeps the set found between the stages
        model.set_viable(final["viable"])
    model.visor.router = None  # trained by train_policy
    record = {"stage": "universal", "base": str(base_dir), "base_sha256": base_sha256, "tasks": tasks,
              "budget": budget or {"name": "full", "fraction": 1.0},
              "universal": asdict(config), "device": asdict(device), "timing": timing,
              "viable_split": {"split": "val", "rows_per_task": [0, policy.viable_per_task]},
              "curve_split": {"split": "val", "rows_per_task": [0, min(config.curve_per_task,
                                                                         policy.viable_per_task)]},
              "viable_seconds": round(time.time() - started, 1),
              "host_validation": host, "configurations": final["evaluated"],
              "viable": [list(v) for v in model.viable], "new_parameters": n_new, "history": history}
    save_visor(model, out_dir, loaded.tokenizer, loaded.image_processor, record)
    print(f"viable configurations {model.viable}; saved {out_dir}", flush=True)
    return record


def label_policy(universal_dir: Path, task_dirs: list[Path], labels_path: Path, policy: PolicyConfig = PolicyConfig(),
                 threads: int = 1, device: DeviceConfig = DeviceConfig()):
    """Stage 2 (rule label_policy): every viable configuration of the universal checkpoint (and, with
    `label_reference="full"`, the host at full compute) on the labelling rows (val rows viable_per_task .. +
    label_per_task per task); writes the labels table (CSV) and returns it."""
    import pandas as pd

    torch.set_num_threads(threads)
    loaded, model = load_visor(str(universal_dir), None, resolve_device(device.device), device.dtype)
    rows = split_rows(task_dirs, "val", policy.label_per_task, offset=policy.viable_per_task)
    examples = [example for _, example in rows]
    started = time.time()
    answers = configuration_answers(loaded, model, examples, policy.inference_batch_size)
    scores = torch.tensor([[exact_match(a, e.answer) for a, e in zip(column, examples)] for column in answers]).T
    table = pd.DataFrame({"task": [e.task for e in examples], "split": "val", "row": [row for row, _ in rows],
                          "target": [e.answer for e in examples]})
    if policy.label_reference == "full":  # the original host at full compute (stage 2 fine-tunes the copy in `loaded`)
        training = model.metadata["training"]
        host = load_checkpoint(training["base"], None, resolve_device(device.device), device.dtype,
                               training["base_sha256"])
        runner = VisionLanguageRunner(host, FullTokens(), str(host.model.device))
        full = [r.answer for r in answer_examples(runner, examples, policy.inference_batch_size)]
        reference = torch.tensor([exact_match(a, e.answer) for a, e in zip(full, examples)])
        table["answer_full"], table["score_full"] = full, reference.tolist()
    else:
        reference = scores[:, -1]
    labels = sufficient(scores, reference, policy.label_tolerance)
    for c, active in enumerate(model.viable):
        name = configuration_name(active)
        table[f"answer_{name}"] = answers[c]
        table[f"score_{name}"] = scores[:, c].tolist()
        table[f"suffices_{name}"] = labels[:, c].int().tolist()
    write_atomically(Path(labels_path), lambda tmp: table.to_csv(tmp, index=False))
    print(f"labelled {len(examples)} samples with {len(model.viable)} viable configurations in "
          f"{time.time() - started:.1f}s; share sufficing per configuration: "
          f"{dict(zip(map(configuration_name, model.viable), labels.mean(0).tolist()))}", flush=True)
    return table


def train_policy(universal_dir: Path, labels_path: Path, task_dirs: list[Path], out_dir: Path,
                 policy: PolicyConfig = PolicyConfig(), seed: int = 0, threads: int = 1,
                 device: DeviceConfig = DeviceConfig()) -> dict:
    """Stage 3 (rule train_policy): the router trained on the labels table; writes the final VISOR checkpoint
    folder `out_dir` (the universal one plus the router) and returns its training record."""
    import pandas as pd

    torch.set_num_threads(threads)
    loaded, model = load_visor(str(universal_dir), None, resolve_device(device.device), device.dtype)
    table = pd.read_csv(labels_path, keep_default_na=False)
    columns = [f"suffices_{configuration_name(active)}" for active in model.viable]
    found = [c for c in table.columns if c.startswith("suffices_")]
    if found != columns:
        raise ValueError(f"{labels_path} has label columns {found} but {universal_dir} has viable configurations "
                         f"{model.viable} (columns {columns}); relabel with label_policy")
    record = {**model.metadata["training"], "stage": "final"}
    if model.config.router_layer is not None and len(model.viable) > 1:
        model.set_viable(model.viable)  # a fresh (seeded) router head
        examples = examples_at(task_dirs, "val", list(zip(table["task"], table["row"])))
        labels = torch.tensor(table[columns].to_numpy(), dtype=torch.float32)
        record["policy"] = {"label_split": "val", "label_examples": len(examples), "labels": str(labels_path),
                            "label_reference": policy.label_reference, "label_tolerance": policy.label_tolerance,
                            **train_router(loaded, model, examples, labels, policy.router_steps, policy.router_lr,
                                           policy.router_batch_size, seed, policy.router_loss)}
    else:
        reason = "no router layer" if model.config.router_layer is None else "a single viable configuration"
        record["policy"] = {"router": None, "reason": reason}
        print(f"no router trained: {reason}", flush=True)
    save_visor(model, out_dir, loaded.tokenizer, loaded.image_processor, record)
    print(f"saved {out_dir}", flush=True)
    return record


def visor_checkpoint_record(visor_dir: Path, base: dict, budget: dict, shipped: bool = False) -> dict:
    """The workflow's checkpoint record of a VISOR folder (same fields as provide_checkpoint's: path, source, repo,
    revision, family, weights_sha256 over all its safetensors, size), plus the base's record and the training
    budget. A shipped folder is first verified against its SHA256SUMS, its recorded base against `base`'s weights
    and its recorded budget against `budget`. Hashed once here; the evaluations read it from the record."""
    from visor_model.llava.checkpoints import (
        CheckpointError,
        check_checkpoint_folder,
        verify_sha256sums,
        weights_sha256,
        weights_size,
    )
    from visor_model.methods.visor.modeling import VISOR_CONFIG

    path = Path(visor_dir)
    if shipped:
        if not path.is_dir():
            raise CheckpointError(f"shipped VISOR checkpoint folder {path} does not exist")
        verify_sha256sums(path)
    training = json.loads((path / VISOR_CONFIG).read_text())["training"]
    if training.get("base_sha256") != base["weights_sha256"]:
        raise CheckpointError(f"VISOR checkpoint {path} was trained on a base with weights "
                              f"{training.get('base_sha256')}, but the configured base {base['path']} has "
                              f"{base['weights_sha256']}: train VISOR again (retrain: true) or configure its base")
    if training.get("budget", {}).get("name", "full") != budget["name"]:
        raise CheckpointError(f"VISOR checkpoint {path} was trained at budget {training.get('budget')}, the workflow "
                              f"asks for {budget}")
    return {"path": str(path), "source": "shipped" if shipped else "train", "repo": None, "revision": None,
            "family": check_checkpoint_folder(path), "weights_sha256": weights_sha256(path),
            "size": weights_size(path), "method": "visor", "budget": budget, "base": base}


def train_visor(base_dir: str, task_dirs: list[Path], out_dir: Path, state_dir: Path, config: UniversalConfig,
                visor_config: dict | None = None, policy: PolicyConfig = PolicyConfig(),
                train_examples: list[Example] | None = None, stop_after: int | None = None,
                device: DeviceConfig = DeviceConfig()) -> dict | None:
    """All three stages in sequence. Intermediate products beside `out_dir`: `<out>.universal/` (stage 1)
    and `<out>.labels.csv` (stage 2)."""
    out_dir = Path(out_dir)
    universal_dir = out_dir.with_name(out_dir.name + ".universal")
    labels_path = out_dir.with_name(out_dir.name + ".labels.csv")
    if train_universal_checkpoint(base_dir, task_dirs, universal_dir, state_dir, config, visor_config, policy,
                                  train_examples, stop_after, device) is None:
        return None
    label_policy(universal_dir, task_dirs, labels_path, policy, config.threads, device)
    return train_policy(universal_dir, labels_path, task_dirs, out_dir, policy, config.seed, config.threads, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="host checkpoint folder (save_pretrained)")
    parser.add_argument("--tasks", nargs="+", type=Path, default=[], help="synthetic task folders")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--state", required=True, type=Path)
    add_arguments(parser)  # --seed, --threads, --dataset... and every named option (visor_model.methods.visor.config)
    args = parser.parse_args()
    if not args.tasks:
        parser.error("--tasks is needed (validation and labelling splits), also with --dataset")
    config, architecture, policy, device = visor_options(arguments_options(args), args.seed, args.threads)
    train_visor(args.base, args.tasks, args.out, args.state, config, architecture, policy, device=device)


if __name__ == "__main__":
    main()

