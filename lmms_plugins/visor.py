"""lmms-eval model `visor`: a VISOR checkpoint (see visor_model.methods.visor.modeling) with a fixed configuration
or its policy.

    --model visor --model_args pretrained=DIR,sa_layers=K          fixed viable configuration with K SA layers
    --model visor --model_args pretrained=DIR,threshold=T          the router picks per sample (T in [0, 1])
    ... ,token_budget=B                                            HiRED (paper mode) before the VISOR layers
    ... ,training=NAME                                             checks the checkpoint's training budget

Shared args as the other plugins: pretrained, revision, device, dtype, batch_size (lmms-eval --batch_size).
Per-sample token counts carry the configuration that ran (sa_layers, its layer indices and roles), the
visual / text tokens that entered the LLM and the per-sample FLOPs by term (`visor_model.efficiency.accounting`:
text-only layers' context excludes the visual tokens, CA blocks, positional conv and router are charged).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmms_plugins.models import EfficientLlava, VisualTokenCounts
from visor_model.efficiency.accounting import FlopAccountant
from visor_model.methods.base import FullTokens, TokenReducer, check_fraction
from visor_model.methods.visor.runner import VisorRunner


@dataclass
class VisorTokenCounts(VisualTokenCounts):
    """VisualTokenCounts plus the VISOR configuration of one sample (the LLM's visual / text token counts and
    the layers per role are in the base class and its FLOP record)."""

    sa_layers: int | None = None
    configuration: list[int] | None = None
    roles: list[str] | None = None

    FIELDS = ("sa_layers", "configuration", "roles")

    @classmethod
    def from_record(cls, record, tokens=None, flops=None) -> VisorTokenCounts:
        base = VisualTokenCounts.from_record(record, tokens, flops)
        return cls(
            **{k: getattr(base, k) for k in base.__dataclass_fields__},
            sa_layers=record.sa_layers,
            configuration=list(record.configuration),
            roles=list(record.roles),
        )


class VisorLlava(EfficientLlava):
    """`visor`: args sa_layers=K or threshold=T (exactly one), optional token_budget=B (HiRED), optional training=NAME
    (the training budget the run means, visor.budgets of the workflow: refused when the checkpoint was trained at
    another; default full)."""

    counts_class = VisorTokenCounts

    def check_args(self, sa_layers: int | str | None = None, threshold: float | str | None = None,
                   token_budget: float | str | None = None, training: str = "full") -> None:
        if (sa_layers is None) == (threshold is None):
            raise ValueError("visor needs exactly one of sa_layers=K (fixed configuration) or threshold=T (policy)")

    def load_model(self, pretrained: str, revision: str | None, dtype: str, threshold: float | str | None = None,
                   training: str = "full", **method_args) -> None:
        """`self.checkpoint` and `self.visor` (the VISOR model over it); a bad threshold fails before loading."""
        from visor_model.methods.visor.modeling import load_visor

        if threshold is not None:
            check_fraction(threshold, "threshold")
        self.checkpoint, self.visor = load_visor(pretrained, revision, self.device_name, dtype)
        trained = self.visor.metadata["training"].get("budget", {}).get("name", "full")
        if trained != str(training):
            raise ValueError(f"training={training} but the VISOR checkpoint {pretrained} was trained at budget "
                             f"{trained!r}")

    def build_runner(self, sa_layers: int | str | None = None, threshold: float | str | None = None,
                     token_budget: float | str | None = None, training: str = "full") -> VisorRunner:
        """The runner of the fixed configuration with `sa_layers` SA layers or of the policy at `threshold`, with
        `token_budget`'s reducer in front."""
        active = None
        if sa_layers is not None:
            try:
                k = int(sa_layers)
            except (TypeError, ValueError):
                raise ValueError(f"sa_layers must be an integer, got {sa_layers!r}") from None
            active = self.visor.configuration_for(k)
        else:
            self.visor._require_router()
        self.reducer = self.build_reducer(token_budget)
        return VisorRunner(self.checkpoint, self.visor, self.reducer, self.device_name, active=active,
                           threshold=threshold)  # VisorRunner converts it (check_fraction)

    @property
    def label(self) -> str:
        """visor[sa=K] (fixed configuration) or visor[tau=T] (policy); the reducer's name with token_budget."""
        if not isinstance(self.reducer, FullTokens):
            return self.reducer.name
        active = self.runner.active
        return f"visor[{'sa=' + str(len(active)) if active is not None else 'tau=' + str(self.runner.threshold)}]"

    def build_accountant(self) -> FlopAccountant:
        return FlopAccountant.for_model(self.checkpoint.model, self.reducer, self.visor)

    def build_reducer(self, token_budget=None) -> TokenReducer:
        if token_budget is None:
            return FullTokens()
        from visor_model.methods.hired import HiRED

        return HiRED(budget=float(token_budget), mode="paper")
