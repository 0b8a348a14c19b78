"""The seeded, resumable training loop's pieces shared by the reference models' recipe
(`visor_model.reference.recipe`) and VISOR's training (`visor_model.methods.visor.training`): the schedule
(`TrainConfig`, `learning_rate`), the batches (`batch_indices`), the training state (`save_train_state`,
`resume_train_state`) and the progress log.

The batch at step t is drawn from a generator seeded with (seed, t), and the whole training state (weights,
AdamW moments, step) is saved as safetensors + JSON, so an interrupted run resumes to exactly the state an
uninterrupted run would have reached.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from visor_model.files import replace_folder_atomically
from visor_model.methods.base import stable_seed


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 100
    log_every: int = 25
    threads: int = 1


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.learning_rate * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def batch_indices(config: TrainConfig, step: int, n_examples: int, weights: torch.Tensor | None = None) -> list[int]:
    """The batch of step `step`: uniform over the examples, or drawn with replacement by `weights`."""
    generator = torch.Generator().manual_seed(stable_seed(config.seed, "batch", step))
    if weights is not None:
        return torch.multinomial(weights, config.batch_size, replacement=True, generator=generator).tolist()
    return torch.randint(n_examples, (config.batch_size,), generator=generator).tolist()


# ----------------------------------------------------------------------------------------------------------
# Resumable state: weights and AdamW moments as safetensors, the step and config as JSON.


def save_train_state(state_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                     extra: dict) -> None:
    """Write the state to a new folder and swap it in for the previous one (never a half-written state)."""
    names = {id(p): n for n, p in model.named_parameters()}
    moments = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state:
                name = names[id(param)]
                moments[f"{name}::exp_avg"] = state["exp_avg"].contiguous()
                moments[f"{name}::exp_avg_sq"] = state["exp_avg_sq"].contiguous()
                moments[f"{name}::step"] = torch.as_tensor(state["step"], dtype=torch.float64).reshape(1)

    def write(tmp: Path) -> None:
        # clone: safetensors refuses tensors that share memory, as tied word embeddings and LM heads do (Qwen2)
        save_file({n: p.detach().clone() for n, p in model.state_dict().items()}, str(tmp / "weights.safetensors"))
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))

    replace_folder_atomically(Path(state_dir), write)


def training_identity(**parts) -> dict:
    """What a saved training state must match to be resumed (`resume_train_state`), JSON-normalised: every
    dataclass part reduced to the fields that change the result (not threads, nor how often it saves and
    logs), other parts as given."""
    cadence = ("threads", "save_every", "log_every")
    reduced = {name: {k: v for k, v in asdict(part).items() if k not in cadence} if is_dataclass(part) else part
               for name, part in parts.items()}
    return json.loads(json.dumps(reduced))


def resume_train_state(state_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, identity: dict,
                       what: str) -> int:
    """The step to start from: that of the state saved in `state_dir` if it was made with this `identity` (the
    training configuration, the base checkpoint...; stored in its state.json), else 0. A state made with another
    identity is discarded, never resumed."""
    state_dir = Path(state_dir)
    if not (state_dir / "state.json").is_file():
        return 0
    saved = json.loads((state_dir / "state.json").read_text())
    if {key: saved.get(key) for key in identity} != identity:
        print(f"discarding the training state in {state_dir}: it was made with another configuration", flush=True)
        shutil.rmtree(state_dir)
        return 0
    step = load_train_state(state_dir, model, optimizer)["step"]
    print(f"resuming {what} from step {step}", flush=True)
    return step


def load_train_state(state_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights and AdamW moments saved by `save_train_state`; returns the JSON record."""
    state_dir = Path(state_dir)
    model.load_state_dict(load_file(str(state_dir / "weights.safetensors")))
    moments = load_file(str(state_dir / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for name, param in params.items():
        if f"{name}::exp_avg" in moments:
            optimizer.state[param] = {
                "step": moments[f"{name}::step"].reshape(()).to(torch.float32),
                "exp_avg": moments[f"{name}::exp_avg"],
                "exp_avg_sq": moments[f"{name}::exp_avg_sq"],
            }
    return json.loads((state_dir / "state.json").read_text())


class ProgressLog:
    """Prints a line every `every` steps with loss, learning rate and throughput."""

    def __init__(self, total_steps: int, every: int):
        self.total_steps, self.every = total_steps, every
        self.start = time.time()
        self.losses: list[float] = []

    def update(self, step: int, loss: float, lr: float) -> None:
        self.losses.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.total_steps:
            elapsed = time.time() - self.start
            mean = sum(self.losses) / len(self.losses)
            print(f"step {step + 1}/{self.total_steps} loss {mean:.4f} lr {lr:.2e} {elapsed:.0f}s", flush=True)
            self.losses = []
