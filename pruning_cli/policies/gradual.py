"""Gradual magnitude pruning (`pruning=gradual`; Zhu and Gupta 2017, Distiller's AGP, SparseML's GMP): one
retraining phase in which the sparsity is raised every `frequency` steps on a cubic schedule from epoch `start` to
epoch `end`, each raise scored by `scoring` and shared between the layers by `sharing`, then fine-tuning at the final
masks."""

from dataclasses import dataclass

from torch import Tensor

from pruning_cli.config.ranges import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, ranged
from pruning_cli.config.schema import MISSING, PruningConfig
from pruning_cli.errors import UserError
from pruning_cli.paper import PAPER_KEPT
from pruning_cli.policies.base import PolicyContext, PruneStep, PruningPolicy, RunView, check_floors, check_target
from pruning_cli.pruning.allocation import Allocation, Scoring, Sharing, allocate
from pruning_cli.pruning.masks import count_nonzero
from pruning_cli.pruning.schedule import cubic_sparsity


@dataclass
class GradualSchedule(PruningConfig):
    """How sparsity rises within one retraining phase: gradual pruning's, and each walk step's of pruning=auto."""

    # How the weights are scored for each raise: magnitude (|w|) or lamp (LAMP's layer-rescaled score).
    scoring: str = "magnitude"
    # How each raise is shared between the layers: global (one cut over every layer's scores, with min_kept),
    # uniform (the same fraction of each layer), or paper (the paper's per-layer % kept, scaled to the target).
    sharing: str = "global"
    start: float = ranged(NON_NEGATIVE, 0.0)  # epoch of the retraining phase where pruning starts
    # Epoch where it reaches the target; the rest of the phase fine-tunes at the final masks
    end: float = ranged(POSITIVE, 3.0)
    frequency: int = ranged(AT_LEAST_ONE, 100)  # optimizer steps between two raises
    min_kept: float = ranged(FRACTION, 0.01)  # per-layer floor of a global cut (fraction of each layer's weights)


@dataclass
class GradualPruning(GradualSchedule):
    # Compression of the prunable weights at the end of the schedule (e.g. 12).
    target: float = ranged(AT_LEAST_ONE, MISSING)


class GradualMagnitude(PruningPolicy):
    choices = ("gradual",)
    settings = GradualPruning

    def __init__(self, settings: GradualPruning, context: PolicyContext, initial: float = 0.0) -> None:
        """`initial`: the sparsity the schedule starts from (0: a dense model; a search continues a pruned one)."""
        super().__init__(settings, context)
        self.initial = initial
        keep = check_target(settings.target, context)
        self.allocation = allocation_of(settings)
        if self.allocation.sharing is Sharing.global_:
            check_floors(keep, settings.min_kept, context, lamp=self.allocation.floored)
        paper = self.allocation.sharing is Sharing.paper
        self.proportions = PAPER_KEPT.get(context.model) if paper else None
        if paper and self.proportions is None:
            raise ValueError(f"pruning.sharing=paper needs the paper's table, which has no model={context.model}")
        if not settings.start < settings.end <= context.retrain_epochs:
            raise ValueError(
                f"pruning.start is {settings.start} and pruning.end {settings.end}: pruning must start before it ends, "
                f"within the retraining phase (retrain.epochs={context.retrain_epochs}); e.g. pruning.end="
                f"{context.retrain_epochs * 3 / 4:g}"
            )

    @property
    def iterations(self) -> int:
        return 1  # one retraining phase, with the pruning inside it

    def prune(self, iteration: int, run: RunView) -> PruneStep:
        """Nothing yet: the schedule starts from the dense model inside the retraining phase."""
        return PruneStep(dict(run.masks), {})

    def during_retraining(
        self, iteration: int, optimizer_step: int, optimizer_steps: int, run: RunView
    ) -> dict[str, Tensor] | None:
        """Masks at the schedule's sparsity after `optimizer_step` of the retraining's `optimizer_steps`, when that
        keeps fewer weights than survive now (the masks themselves say where the schedule stands: nothing to save
        for a resumed run)."""
        per_epoch = optimizer_steps / self.context.retrain_epochs
        start = round(self.config.start * per_epoch)
        end = max(round(self.config.end * per_epoch), start + 1)
        final = 1 - 1 / self.config.target
        sparsity = cubic_sparsity(optimizer_step, start, end, self.config.frequency, final, self.initial)
        total = sum(weight.numel() for weight in run.weights.values())
        # From the end on, exactly check_target's count, every policy's (in floats 1 - (1 - 1/target) is not
        # 1/target: 3,327 for 3,328 at 80 on LeNet-300-100); before it, never fewer.
        target_keep = round(total / self.config.target)
        keep = target_keep if optimizer_step >= end else max(target_keep, round(total * (1 - sparsity)))
        if keep >= count_nonzero(run.masks.values()):
            return None
        try:
            return allocate(self.allocation, run.weights, run.masks, keep, self.config.min_kept, self.proportions)
        except ValueError as error:
            raise UserError(f"{error}: lower pruning.min_kept or pruning.target") from error


def allocation_of(settings: GradualSchedule) -> Allocation:
    """The schedule's scoring and sharing, or a ValueError naming the setting and its choices."""
    chosen = {}
    for key, kind in (("scoring", Scoring), ("sharing", Sharing)):
        value = getattr(settings, key)
        try:
            chosen[key] = kind(value)
        except ValueError:
            choices = ", ".join(choice.value for choice in kind)
            raise ValueError(f"pruning.{key} is {value}; choose one of {choices}") from None
    return Allocation(**chosen)
