"""Budgeted pruning (`pruning=auto`): each iteration chooses every layer's sensitivity on the validation split,
prunes by the paper's rule, retrains, and keeps the result while validation top-1 stays within the budget."""

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pruning_cli.config import PruningConfig, StdSource
from pruning_cli.policies.base import KEEP, PolicyContext, PruneStep, PruningPolicy, RunView, Verdict
from pruning_cli.pruning.step import LayerStep, prune_step, surviving_std
from pruning_cli.pruning.targets import LayerTarget
from pruning_cli.ranges import AT_LEAST_ONE, NON_NEGATIVE, Range, ranged

log = logging.getLogger(__name__)
# How often the layer budget is halved looking for a step other than the one just rolled back.
MAX_SHRINKS = 10


@dataclass
class AutoPruning(PruningConfig):
    """pruning=auto: find the compression instead of replaying it. Each iteration chooses every layer's sensitivity
    on the validation split (the largest of `levels` whose pruning of that layer alone, from its current mask,
    loses at most `layer_budget` points of the current validation top-1), prunes by the paper's rule, retrains, and
    goes on while the retrained model stays within `budget` points of the dense model's validation top-1. A model
    past the budget is rolled back to the last one within it (model.pt at the end), and the search goes on from there
    with smaller steps (`layer_budget` times `backoff`) until `patience` iterations in a row have been rolled back."""

    name: str = "auto"
    # At most, rolled-back ones included; fewer when no layer can be pruned or patience runs out
    iterations: int = ranged(AT_LEAST_ONE, 10)
    # Points of validation top-1 the final model may lose against the dense model
    budget: float = ranged(NON_NEGATIVE, 0.3)
    # Points one layer pruned alone, before retraining, may lose (null: the budget shared by the prunable layers).
    # 2 was chosen on the validation split of Fashion-MNIST, LeNet-300-100 (docs/results.md: the highest
    # compression within the budget among 0.1, 1, 2 and 4).
    layer_budget: float | None = ranged(NON_NEGATIVE, 2.0)
    levels: list[float] = ranged(NON_NEGATIVE, default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    # After a rolled-back iteration the layer budget is multiplied by this (a smaller step from the kept model), and
    # divided by it, up to `layer_budget`, after a kept one: the step size follows what retraining can recover.
    backoff: float = ranged(Range(0, 1, low_open=True, high_open=True), 0.5)
    # Rolled-back iterations in a row that end the search (1: stop at the first model past the budget).
    patience: int = ranged(AT_LEAST_ONE, 3)
    std: StdSource = StdSource.surviving  # of the threshold, as in the paper's rule (pruning=iterative)


@dataclass
class AutoProgress:
    """Where the search stands: the last iteration within the budget (0: dense), the dense model's validation top-1
    that the budget is counted from, the iterations rolled back since the last one kept, the layer budget of the
    next step (a fraction), the steps tried and rejected, and the dense std (std: dense)."""

    accepted: int = 0
    dense_val_top1: float = math.nan
    rollbacks: int = 0
    layer_budget: float = math.nan
    trying: dict[str, float] = field(default_factory=dict)  # this iteration's sensitivities
    rejected: dict[str, float] = field(default_factory=dict)  # those of the step just rolled back
    dense_std: dict[str, float] = field(default_factory=dict)


class BudgetedSearch(PruningPolicy):
    settings, schema = AutoPruning, "auto_pruning"
    reads_validation = True

    def __init__(self, settings: AutoPruning, context: PolicyContext) -> None:
        super().__init__(settings, context)
        check_auto(settings, context)
        # null: the layers share the budget (pruned together, their losses add up before retraining recovers them).
        shared = settings.budget / len(context.layer_kinds)
        self.layer_budget = (shared if settings.layer_budget is None else settings.layer_budget) / 100
        self.budget, self.levels = settings.budget / 100, sorted(settings.levels)
        self.progress = AutoProgress()

    def within_budget(self, top1: float, dense_top1: float) -> bool:
        """Whether `top1` loses at most the budget against `dense_top1`; a loss of exactly the budget is within it
        (0.898 - 0.003 is 0.8950000000000001 in floating point, above an accuracy of 4,475 / 5,000)."""
        return top1 >= dense_top1 - self.budget - 1e-9

    def prune(self, iteration: int, run: RunView) -> PruneStep | None:
        """Each layer's sensitivity for this iteration, chosen on the validation split; None when no layer can be
        pruned within the budget. The step just rolled back is never tried again: from the same model it makes the
        same masks, and retraining them again would only fish for a luckier validation score; the layer budget
        shrinks until the choice differs."""
        progress = self.progress
        if math.isnan(progress.dense_val_top1):  # the first step starts from the dense model
            progress.dense_val_top1, progress.layer_budget = run.validation_top1(), self.layer_budget
            if self.config.std is StdSource.dense:
                progress.dense_std = {name: surviving_std(w, run.masks[name]) for name, w in run.weights.items()}
        for _ in range(MAX_SHRINKS):
            chosen = self._sensitivities_within(run, progress.layer_budget)
            if chosen != progress.rejected:
                break
            progress.layer_budget *= self.config.backoff
        else:
            chosen = {}
        progress.trying = chosen
        if not chosen:
            log.info(f"iteration {iteration}: no layer can be pruned within the budget; model.pt is iteration "
                     f"{progress.accepted}'s")  # fmt: skip
            return None
        log.info(f"iteration {iteration}: sensitivities chosen on the validation split: {chosen}")
        steps = {name: LayerStep(LayerTarget(sensitivity=level)) for name, level in chosen.items()}
        masks, records = prune_step(run.weights, run.masks, steps, progress.dense_std or None)
        return PruneStep(masks, records)

    def _sensitivities_within(self, run: RunView, allowance: float) -> dict[str, float]:
        """Per layer, the largest level whose pruning of that layer alone, from its current mask, removes a weight
        and keeps validation top-1 within `allowance` (a fraction) of the model's own (a sensitivity analysis)."""
        baseline, chosen = run.validation_top1(), {}
        for name in run.weights:
            alive = int(run.masks[name].sum())
            for level in self.levels:
                step = {name: LayerStep(LayerTarget(sensitivity=level))}
                masks, records = prune_step(run.weights, run.masks, step, self.progress.dense_std or None)
                top1 = run.validation_top1(masks)  # on every level: under torchrun every process evaluates alike
                if records[name].kept < alive and top1 >= baseline - allowance:
                    chosen[name] = level
        return chosen

    def verdict(self, iteration: int, run: RunView) -> Verdict:
        """Keep the retrained model (and let the next step grow), or roll back to the last one within the budget
        and go on from it with a smaller step; `patience` rollbacks in a row stop the search."""
        progress, settings = self.progress, self.config
        top1 = run.validation_top1()
        if self.within_budget(top1, progress.dense_val_top1):  # kept: the steps grow back towards the layer budget
            progress.accepted, progress.rollbacks, progress.rejected = iteration, 0, {}
            progress.layer_budget = min(self.layer_budget, progress.layer_budget / settings.backoff)
            return KEEP
        progress.rollbacks, progress.rejected = progress.rollbacks + 1, progress.trying
        stopped = progress.rollbacks >= settings.patience
        progress.layer_budget *= settings.backoff
        then = "stopped" if stopped else f"goes on with a layer budget of {100 * progress.layer_budget:.3g} points"
        log.warning(
            f"iteration {iteration}: validation top-1 {top1:.2%} is past the budget "
            f"({progress.dense_val_top1 - self.budget:.2%}); rolled back to iteration {progress.accepted} (model.pt "
            f"unless a later one is kept); the search {then}"
        )
        return Verdict(rollback_to=progress.accepted, stop=stopped)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.progress)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.progress = AutoProgress(**state)


def check_auto(settings: AutoPruning, context: PolicyContext) -> None:
    """What `pruning=auto` needs beyond its settings' ranges: a validation split to choose on, and levels."""
    if not context.validation:
        raise ValueError("pruning=auto chooses on held-out training data: set dataset.val_split=N (e.g. 5000)")
    if not settings.levels:
        raise ValueError("pruning.levels is empty; give at least one level, e.g. pruning.levels=[0.5,1.0]")
