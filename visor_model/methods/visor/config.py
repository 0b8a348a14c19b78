"""VISOR's options, in one place and without torch: the architecture (`VisorConfig`), universal training
(`UniversalConfig`) and the viable configurations / policy labels / router (`PolicyConfig`).

The workflow's `visor:` config section, the options each workflow stage depends on (`stage_options`), and
the command line of `python -m visor_model.methods.visor.training` (`add_arguments`) are all derived from the
dataclass fields below; workflow/schemas/config.schema.yaml repeats their defaults (tests check they agree).
Importing this module needs neither torch nor transformers: the Snakefile imports it (through
visor_model.workflow_config) at every parse.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields

from visor_model.efficiency.accounting import MethodCost, Overhead, positional_conv_flops, routing_token_flops

SA, CA, TEXT = "sa", "ca", "text"

# The workflow stages (rules) whose outputs depend on an option: a change reruns those stages (and what follows).
UNIVERSAL, LABEL, POLICY = "universal", "label", "policy"  # train_visor, label_policy, train_policy
STAGES = (UNIVERSAL, LABEL, POLICY)


def option(default, *stages: str, choices: tuple | None = None, flag: bool = True):
    """A dataclass field that is a named option of the workflow's `visor:` section (and, with `flag`, a flag of
    the CLI), read by the given stages. Fields declared without it (grad_clip, save_every, ...) are
    Python-API-only."""
    return field(default=default, metadata={"stages": stages, "choices": choices, "flag": flag})


# ----------------------------------------------------------------------------------------------------------
# architecture


def spread(n: int, k: int) -> list[int]:
    """k of range(n), evenly spread: the centre of each of k equal bins, floor((j + 1/2) * n / k).
    spread(8, 1) = [4], spread(8, 2) = [2, 6], spread(8, 4) = [1, 3, 5, 7], spread(n, n) = range(n)."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot spread {k} items over {n}")
    return [int(math.floor((j + 0.5) * n / k)) for j in range(k)]


def default_layers(n_layers: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Default (ca_layers, sa_candidates): m = max(1, L // 3) slots of stride L / m; slot j starts at
    s_j = floor(j * L / m); the CA layer is s_j and the SA candidate s_j + 1 (layer 0 is always a CA layer,
    so the routing token has cross-attended the image before the router reads it at the first SA candidate).
    L = 6: CA (0, 3), SA (1, 4), text-only (2, 5).  L = 24: CA (0, 3, ..., 21), SA (1, 4, ..., 22)."""
    if n_layers < 2:
        raise ValueError("VISOR needs at least 2 LLM layers")
    m = max(1, n_layers // 3)
    starts = [int(math.floor(j * n_layers / m)) for j in range(m)]
    return tuple(starts), tuple(s + 1 for s in starts)


@dataclass
class VisorConfig:
    """Where the paper is silent, every choice is an option here (defaults in brackets).

    n_layers        LLM layers of the host.
    ca_layers       indices hosting a new cross-attention block [L/3 uniformly spaced, see default_layers].
    sa_candidates   indices that may run as SA; a configuration is a subset of them [L/3 uniformly spaced,
                    disjoint from ca_layers: a CA block in a layer that also runs SA would be redundant].
                    Layers in neither set are text-only.
    conv_kernel     depth-wise conv1d conditional positional embedding on the visual tokens [7, padding 3],
                    0 disables it. Applied once, to the visual state, just before the first CA layer, as a
                    residual V <- V + conv(V) with zero-initialised weights and bias, so it starts as the
                    identity; later SA layers also see the embedded visual tokens.
    gate_init       initial value of the scalar CA gate g; output scaled by tanh(g) [0.0: CA adds nothing].
    ca_init         "host": q/k/v/o and both RMSNorms copied from the host layer's self-attention and input
                    norm; "random": fresh init (normal, std 0.02) [host].
    ca_rope         rotate CA queries / keys with the tokens' original position ids, like the host [True].
                    CA is unmasked: every text token (also those before the image) sees every visual token.
    router_hidden   width of the router MLP d -> router_hidden -> n_viable (GELU) [64]; 0 disables the router.
    seed            initialisation seed of the new modules.
    """

    n_layers: int
    ca_layers: tuple[int, ...] | None = option(None, UNIVERSAL)
    sa_candidates: tuple[int, ...] | None = option(None, UNIVERSAL)
    conv_kernel: int = option(7, UNIVERSAL)
    gate_init: float = option(0.0, UNIVERSAL)
    ca_init: str = option("host", UNIVERSAL, choices=("host", "random"))
    ca_rope: bool = option(True, UNIVERSAL)
    router_hidden: int = option(64, UNIVERSAL)
    seed: int = 0

    def __post_init__(self):
        default_ca, default_sa = default_layers(self.n_layers)
        self.ca_layers = tuple(sorted(int(i) for i in (default_ca if self.ca_layers is None else self.ca_layers)))
        self.sa_candidates = tuple(
            sorted(int(i) for i in (default_sa if self.sa_candidates is None else self.sa_candidates))
        )
        for name in ("ca_layers", "sa_candidates"):
            indices = getattr(self, name)
            if len(set(indices)) != len(indices) or any(not 0 <= i < self.n_layers for i in indices):
                raise ValueError(f"{name} must be distinct indices in [0, {self.n_layers}), got {indices}")
        if set(self.ca_layers) & set(self.sa_candidates):
            raise ValueError(f"ca_layers {self.ca_layers} and sa_candidates {self.sa_candidates} must be disjoint")
        if self.ca_init not in ("host", "random"):
            raise ValueError(f"ca_init must be 'host' or 'random', got {self.ca_init!r}")
        if self.conv_kernel < 0 or (self.conv_kernel and self.conv_kernel % 2 == 0):
            raise ValueError(f"conv_kernel must be 0 or odd, got {self.conv_kernel}")

    @property
    def router_layer(self) -> int | None:
        """The router reads the routing token at the input of this layer (the first SA candidate); None when
        there is no router or nothing runs before the first candidate."""
        if self.router_hidden <= 0 or not self.sa_candidates or self.sa_candidates[0] == 0:
            return None
        return self.sa_candidates[0]

    def family(self) -> list[tuple[int, ...]]:
        """Configurations considered: for k = 0..n the evenly spread k-subset of the n SA candidates."""
        n = len(self.sa_candidates)
        return [tuple(self.sa_candidates[i] for i in spread(n, k)) for k in range(n + 1)]

    def check_active(self, active) -> tuple[int, ...]:
        active = tuple(sorted(int(i) for i in active))
        if not set(active) <= set(self.sa_candidates):
            raise ValueError(f"configuration {active} is not a subset of the SA candidates {self.sa_candidates}")
        return active

    def roles(self, active) -> tuple[str, ...]:
        active = set(self.check_active(active))
        return tuple(SA if layer in active else CA if layer in self.ca_layers else TEXT
                     for layer in range(self.n_layers))

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "VisorConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known})


@dataclass(frozen=True)
class VisorCost(MethodCost):
    """VISOR's own prefill work beside its layers' roles (which `llm_prefill_flops` charges): the positional conv
    (`conv_kernel`; 0: none) and, on routed samples, the routing token and the router MLP (`router_layer` and
    `router_sizes` [d, hidden, n]; None: no trained router). `VisorModel.flop_cost` makes it."""

    conv_kernel: int = 0
    router_layer: int | None = None
    router_sizes: tuple[int, ...] | None = None

    sample_fields = ("routed",)

    def overhead_flops(self, shape, tokens, causal_mode: str = "causal") -> Overhead:
        prefill = positional_conv_flops(shape.llm, tokens.n_visual, tokens.roles, self.conv_kernel)
        if tokens.routed:
            if self.router_layer is None:
                raise ValueError("the sample was routed but this VISOR model has no router")
            prefill = prefill + routing_token_flops(shape.llm, tokens.n_text, tokens.n_visual, tokens.roles,
                                                    self.router_layer, self.router_sizes, causal_mode)
        return Overhead(prefill=prefill)


# ----------------------------------------------------------------------------------------------------------
# training

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class DeviceConfig:
    """Where every VISOR stage runs (training, viable configurations, labelling, router): `device` as the
    evaluation's ("auto": cuda where there is one, else cpu) and `dtype`, the dtype the host and the VISOR
    modules are loaded, trained (weights, gradients, AdamW moments) and saved in. float32 by default: pure
    bfloat16 AdamW loses updates smaller than the weights' precision; evaluation casts to evaluation.dtype."""

    device: str = option("auto", UNIVERSAL, LABEL, POLICY)
    dtype: str = option("float32", UNIVERSAL, LABEL, POLICY, choices=DTYPES)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"VISOR dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass(frozen=True)
class TrainData:
    """VISOR's training examples from a Hugging Face dataset in LLaVA-OneVision's data format (an `image`
    column and `conversations`, a list of {"from": "human" | "gpt", "value": ...} turns with `<image>` in the
    human turn; the first human/gpt pair is the question and answer) instead of the synthetic train splits.
    `dataset`: a hub id or a local folder; `subset`: its configuration (e.g. one source of
    lmms-lab/LLaVA-OneVision-Data); `revision`: a pinned commit (hub ids); `limit`: the first rows only."""

    dataset: str
    revision: str | None = None
    split: str = "train"
    limit: int | None = None
    subset: str | None = None

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"visor.train_data.limit must be at least 1, got {self.limit}")


@dataclass(frozen=True)
class UniversalConfig:
    """Universal training. `order="paper"` follows the paper: stage 1 trains the largest configuration (host
    frozen), then the viable configurations are searched on the val split, then stage 2 fine-tunes everything
    sampling only viable configurations. `order="joint"` samples the whole family in both stages and searches
    the viable configurations at the end. The budget defaults to the host's order: 3,000 + 3,000 steps of batch
    16 (96,000 examples, as the reference's 3,000 steps of batch 32), with the host's data curriculum
    (`visor_model.reference.recipe.curriculum_weights`, over each stage). The schedule of each stage:
    `visor_model.methods.visor.training.universal_stage`. Validation accuracy of every family member on the first
    `curve_per_task` val rows per task is recorded every `eval_every` steps (the training curve)."""

    stage1_steps: int = option(3000, UNIVERSAL)
    stage2_steps: int = option(3000, UNIVERSAL)
    batch_size: int = option(16, UNIVERSAL)
    stage1_lr: float = option(1e-3, UNIVERSAL)
    stage2_lr: float = option(2e-4, UNIVERSAL)
    warmup_steps: int = option(50, UNIVERSAL)
    order: str = option("paper", UNIVERSAL, choices=("paper", "joint"))
    curriculum: bool = option(True, UNIVERSAL)
    # stage 2 trains the VISOR modules only (the host stays frozen, as in stage 1) instead of everything
    stage2_freeze_host: bool = option(False, UNIVERSAL)
    eval_every: int = option(500, UNIVERSAL)  # 0: no validation curve (the final viable search still runs)
    curve_per_task: int = option(50, UNIVERSAL)
    # a TrainData (or its dict, as in the workflow's config); None: the synthetic train splits
    train_data: TrainData | None = option(None, UNIVERSAL, flag=False)
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 100
    log_every: int = 50
    threads: int = 1

    def __post_init__(self):
        if isinstance(self.train_data, dict):
            object.__setattr__(self, "train_data", TrainData(**self.train_data))
        if self.order not in ("paper", "joint"):
            raise ValueError(f"visor.order must be 'paper' or 'joint', got {self.order!r}")
        for name in ("stage1_steps", "stage2_steps", "eval_every", "curve_per_task"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"visor.{name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def steps(self) -> int:
        return self.stage1_steps + self.stage2_steps


@dataclass(frozen=True)
class PolicyConfig:
    """Viable configurations, policy labels and router training (defaults: about a minute each on 2 CPU cores).

    Labels: configuration c suffices for a sample when its score >= the reference's score - `label_tolerance`;
    the reference is the largest viable configuration (`label_reference="largest"`) or the host model at full
    compute (`"full"`). Router loss: `"bce"`, one sufficiency probability per configuration (sigmoid); or
    `"ce"`, cross-entropy on the cheapest sufficing configuration (the largest where none suffices), whose
    cumulative softmax is the probability that c suffices. The defaults are the paper's reading: the full model as
    the reference (with 0/1 scores its ">= 99% of the full model's accuracy" is tolerance 0) and cross-entropy."""

    viable_per_task: int = option(100, UNIVERSAL, LABEL)  # val rows per task that pick the viable configurations
    label_per_task: int = option(100, LABEL)  # the next val rows per task, labelled for the router
    inference_batch_size: int = option(32, UNIVERSAL, LABEL)  # batch of the viable-configuration and labelling runs
    label_reference: str = option("full", LABEL, choices=("full", "largest"))
    label_tolerance: float = option(0.0, LABEL)
    router_loss: str = option("ce", POLICY, choices=("ce", "bce"))
    router_steps: int = option(200, POLICY)
    router_lr: float = option(3e-3, POLICY)
    router_batch_size: int = option(32, POLICY)

    def __post_init__(self):
        if self.label_reference not in ("largest", "full"):
            raise ValueError(f"visor.label_reference must be 'largest' or 'full', got {self.label_reference!r}")
        if self.router_loss not in ("bce", "ce"):
            raise ValueError(f"visor.router_loss must be 'bce' or 'ce', got {self.router_loss!r}")
        if not 0.0 <= float(self.label_tolerance) <= 1.0:
            raise ValueError(f"visor.label_tolerance must be in [0, 1] (a score difference), got "
                             f"{self.label_tolerance!r}")


ARCHITECTURE_OPTIONS = tuple(f.name for f in fields(VisorConfig) if f.name not in ("n_layers", "seed"))


def visor_options(options: dict, seed: int = 0, threads: int = 1
                  ) -> tuple[UniversalConfig, dict, PolicyConfig, DeviceConfig]:
    """(UniversalConfig, VisorConfig options, PolicyConfig, DeviceConfig) from one flat dict of named options (the
    workflow's `visor:` config section, or a part of it); absent keys keep their defaults, unknown keys are refused."""
    universal_keys = {f.name for f in fields(UniversalConfig)} - {"seed", "threads"}
    policy_keys = {f.name for f in fields(PolicyConfig)}
    device_keys = {f.name for f in fields(DeviceConfig)}
    workflow_only = {"models", "budgets", "shipped"}  # which models and budgets train, and shipped checkpoints
    unknown = set(options) - universal_keys - policy_keys - device_keys - set(ARCHITECTURE_OPTIONS) - workflow_only
    if unknown:
        raise ValueError(f"unknown VISOR options {sorted(unknown)}")
    universal = UniversalConfig(seed=seed, threads=threads, **{k: v for k, v in options.items() if k in universal_keys})
    architecture = {"seed": seed, **{k: v for k, v in options.items() if k in ARCHITECTURE_OPTIONS}}
    policy = PolicyConfig(**{k: v for k, v in options.items() if k in policy_keys})
    device = DeviceConfig(**{k: v for k, v in options.items() if k in device_keys})
    return universal, architecture, policy, device


# ----------------------------------------------------------------------------------------------------------
# the named options: workflow stages, defaults, command line


def option_fields() -> list:
    """The dataclass fields that are named options, in order: universal training, architecture, policy, device."""
    return [f for cls in (UniversalConfig, VisorConfig, PolicyConfig, DeviceConfig) for f in fields(cls)
            if "stages" in f.metadata]


def stage_options(stage: str) -> tuple[str, ...]:
    """Names of the options `stage` (one of STAGES) depends on: a change reruns that stage and what follows."""
    if stage not in STAGES:
        raise ValueError(f"unknown VISOR stage {stage!r}; stages: {', '.join(STAGES)}")
    return tuple(f.name for f in option_fields() if stage in f.metadata["stages"])


def option_defaults() -> dict:
    """{option: default} of every named option (those of the workflow's `visor:` section but `models`),
    plus `threads` (UniversalConfig's; the workflow passes it as the jobs' threads)."""
    defaults = {f.name: f.default for f in option_fields()}
    defaults["threads"] = next(f.default for f in fields(UniversalConfig) if f.name == "threads")
    return defaults


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --seed, --threads, --dataset/--dataset-revision/--dataset-split/--dataset-limit (train_data) and one
    flag per other named option (--stage1-steps, --ca-layers 0 3, --no-ca-rope, ...), each defaulting to its
    dataclass default."""
    plain = {f.name: f.default for f in fields(UniversalConfig)}
    parser.add_argument("--seed", type=int, default=plain["seed"])
    parser.add_argument("--threads", type=int, default=plain["threads"])
    data = {f.name: f.default for f in fields(TrainData)}
    parser.add_argument("--dataset", help="train on this HF dataset (LLaVA-OneVision format: image, conversations)")
    parser.add_argument("--dataset-revision", default=data["revision"])
    parser.add_argument("--dataset-split", default=data["split"])
    parser.add_argument("--dataset-limit", type=int, default=data["limit"])
    parser.add_argument("--dataset-subset", default=data["subset"])
    for f in option_fields():
        if not f.metadata["flag"]:
            continue
        if f.default is MISSING:
            raise TypeError(f"option {f.name} needs a default")
        if isinstance(f.default, bool):
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=f.default)
        elif f.default is None:  # layer indices (None: the default placement)
            parser.add_argument(_flag(f.name), type=int, nargs="*", default=None, metavar="LAYER")
        elif f.metadata["choices"]:
            parser.add_argument(_flag(f.name), choices=list(f.metadata["choices"]), default=f.default)
        else:
            parser.add_argument(_flag(f.name), type=type(f.default), default=f.default)


def arguments_options(args: argparse.Namespace) -> dict:
    """The named options of parsed arguments (see add_arguments), for visor_options."""
    options = {f.name: getattr(args, f.name) for f in option_fields() if f.metadata["flag"]}
    options["train_data"] = None if args.dataset is None else TrainData(
        args.dataset, args.dataset_revision, args.dataset_split, args.dataset_limit, args.dataset_subset)
    return options
