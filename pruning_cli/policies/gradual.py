"""Gradual magnitude pruning (`pruning=gradual`; Zhu and Gupta 2017, Distiller's AGP, SparseML's GMP): one
retraining phase in which the sparsity is raised every `frequency` steps on a cubic schedule from epoch `start` to
epoch `end`, each raise shared between the layers by `allocation`, then fine-tuning at the final masks."""

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from pruning_cli.config import MISSING, PruningConfig
from pruning_cli.paper import PAPER_KEPT
from pruning_cli.policies.base import PolicyContext, PruneStep, PruningPolicy, RunView, check_min_kept, check_target
from pruning_cli.pruning.allocation import Allocation, allocate
from pruning_cli.pruning.schedule import cubic_sparsity


@dataclass
class GradualPruning(PruningConfig):
    name: str = "gradual"
    # Compression of the prunable weights at the end of the schedule (e.g. 12).
    target: float = MISSING  # type: ignore[assignment]
    # How each raise is shared between the layers: global (one magnitude cut), lamp, uniform, or paper (the
    # paper's per-layer % kept, scaled to the target).
    allocation: str = "global"
    start: float = 0.0  # epoch of the retraining phase where pruning starts
    end: float = 3.0  # epoch where it reaches the target; the rest of the phase fine-tunes at the final masks
    frequency: int = 100  # optimizer steps between two raises
    min_kept: float = 0.01  # per-layer floor of a global cut (fraction of each layer's weights)


class GradualMagnitude(PruningPolicy):
    settings, schema = GradualPruning, "gradual_pruning"

    def __init__(self, settings: GradualPruning, context: PolicyContext) -> None:
        super().__init__(settings, context)
        check_target(settings.target, context)
        check_min_kept(settings.min_kept)
        choices = ", ".join(kind.value for kind in Allocation)
        try:
            self.allocation = Allocation(settings.allocation)
        except ValueError:
            raise ValueError(f"pruning.allocation is {settings.allocation}; choose one of {choices}") from None
        self.proportions = PAPER_KEPT.get(context.model) if self.allocation is Allocation.paper else None
        if self.allocation is Allocation.paper and self.proportions is None:
            raise ValueError(f"pruning.allocation=paper needs the paper's table, which has no model={context.model}")
        if not 0 <= settings.start < settings.end <= context.retrain_epochs or settings.frequency < 1:
            raise ValueError(
                f"pruning.start={settings.start}, pruning.end={settings.end} and pruning.frequency="
                f"{settings.frequency}: need 0 <= start < end <= retrain.epochs ({context.retrain_epochs}) and a "
                "frequency of at least 1 step"
            )
        self.sparsity = 0.0  # the sparsity of the masks applied so far

    @property
    def iterations(self) -> int:
        return 1  # one retraining phase, with the pruning inside it

    def prune(self, iteration: int, run: RunView) -> PruneStep:
        """Nothing yet: the schedule starts from the dense model inside the retraining phase."""
        return PruneStep(dict(run.masks), {})

    def during_retraining(self, iteration: int, step: int, steps: int, run: RunView) -> dict[str, Tensor] | None:
        """Masks at the schedule's sparsity after `step` of `steps`, when it has risen since the last raise."""
        per_epoch = steps / self.context.retrain_epochs
        start, end = round(self.config.start * per_epoch), round(self.config.end * per_epoch)
        final = 1 - 1 / self.config.target
        sparsity = cubic_sparsity(step, start, max(end, start + 1), self.config.frequency, final)
        if sparsity <= self.sparsity:
            return None
        self.sparsity = sparsity
        total = sum(weight.numel() for weight in run.weights.values())
        keep = round(total * (1 - sparsity))
        return allocate(self.allocation, run.weights, run.masks, keep, self.config.min_kept, self.proportions)

    def state_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sparsity = state["sparsity"]
