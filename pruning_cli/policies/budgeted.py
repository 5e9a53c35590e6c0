"""Budgeted pruning (`pruning=auto`): the highest compression whose top-1 drop against the dense model, on the
validation split, stays within the budget at the stated confidence.

The search moves one number, the overall compression, in log steps. Each candidate is one retraining phase of
gradual magnitude pruning (policies/gradual.py) to its compression, from the last model kept (or from the dense
one), and is judged alone: the paired upper bound of its drop on the validation images (pruning/paired.py),
whatever was tried before it. Within the budget, the next candidate is a step further (`growth`); past it, the model
is rolled back and that step is halved in log-compression for the rest of the search. No compression is tried
twice, and none at or past a failure from the same starting model (there the search bisects); a later model,
trained longer, may go past it: one unlucky verdict early on does not end the search. The measured curve is in
metrics.csv.
"""

import logging
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from torch import Tensor

from pruning_cli.policies.base import PolicyContext, PruneStep, PruningPolicy, RunView, Verdict, floor_total
from pruning_cli.policies.gradual import GradualMagnitude, GradualPruning, GradualSchedule
from pruning_cli.pruning.allocation import Allocation
from pruning_cli.pruning.paired import PairedDrop
from pruning_cli.ranges import AT_LEAST_ONE, NON_NEGATIVE, Range, ranged

log = logging.getLogger(__name__)
ABOVE_ONE = Range(1, low_open=True)


class Restart(Enum):
    """Where each candidate's retraining starts from."""

    kept = "kept"  # the last model within the budget (the dense one until one is): its training accumulates
    dense = "dense"  # the dense model every time: each candidate is a function of its compression alone


@dataclass
class AutoPruning(GradualSchedule):
    """pruning=auto. The schedule fields (allocation, start, end, frequency, min_kept) shape each candidate's
    gradual pruning within its retraining phase; the others, the search."""

    name: str = "auto"
    # Points of validation top-1 the kept model may lose against the dense model.
    budget: float = ranged(NON_NEGATIVE, 0.3)
    # One-sided: a candidate is kept when its drop is within the budget with this probability. 0.5 trusts the
    # drop seen; 0.8 asks the drop plus 0.84 standard errors to fit (docs/results.md, "Budgeted pruning").
    confidence: float = ranged(Range(0.5, 1, high_open=True), 0.8)
    candidates: int = ranged(AT_LEAST_ONE, 8)  # compressions tried, one retraining phase each
    first: float = ranged(ABOVE_ONE, 8.0)  # the first candidate's compression
    # The step from a compression within the budget to the next candidate, until one is past it: that one's step is
    # then halved in log-compression (its square root) for the rest of the search.
    growth: float = ranged(ABOVE_ONE, 2.0)
    restart: Restart = Restart.kept


@dataclass
class SearchProgress:
    """Where the search stands: the dense model's per-image correctness on the validation split, the highest
    compression within the budget (1: dense) and the iteration holding it, every compression past it and the lowest
    one from the model the next candidate starts from (`cap`), the step to the next candidate, and the candidate of
    the current iteration (None: none left) with the sparsity its schedule starts from."""

    dense_correct: Tensor | None = None
    passed: float = 1.0
    kept: int = 0
    failures: list[float] = field(default_factory=list)
    cap: float = math.inf
    step: float = math.nan
    candidate: float | None = None
    initial: float = 0.0


def next_compression(
    passed: float, step: float, cap: float, failures: list[float], ceiling: float, total: int
) -> float | None:
    """`step` times the highest compression within the budget (at most `ceiling`), moved halfway back towards it
    (in log-compression) while it reaches `cap` or keeps as many weights as a compression that failed; None when no
    count of the `total` weights is left between it and the one kept."""
    kept, failed = round(total / passed), {round(total / failure) for failure in failures}
    candidate = min(passed * step, ceiling)
    while round(total / candidate) <= round(total / cap) or round(total / candidate) in failed:
        candidate = math.sqrt(passed * candidate)
        if round(total / candidate) >= kept:
            return None
    return candidate if round(total / candidate) < kept else None


class BudgetedSearch(PruningPolicy):
    settings, schema = AutoPruning, "auto_pruning"
    reads_validation = True

    def __init__(self, settings: AutoPruning, context: PolicyContext) -> None:
        super().__init__(settings, context)
        if not context.validation:
            raise ValueError("pruning=auto chooses on held-out training data: set dataset.val_split=N (e.g. 5000)")
        self.candidate(1.0, 0.0)  # the schedule's settings, checked before any work
        self.total = sum(context.layer_sizes.values())
        floors = self.floors()
        self.ceiling = self.total / floors if floors else float(self.total)
        self.progress, self.gradual = SearchProgress(), None

    @property
    def iterations(self) -> int:
        return self.config.candidates

    def floors(self) -> int:
        """Weights the per-layer floor of a global or LAMP cut keeps whatever the compression."""
        if Allocation(self.config.allocation) not in (Allocation.global_, Allocation.lamp):
            return 0
        return floor_total(self.config.min_kept, self.context)

    def candidate(self, compression: float, initial: float) -> GradualMagnitude:
        """Gradual pruning to `compression` within one retraining phase, from sparsity `initial`."""
        schedule = {name: getattr(self.config, name) for name in GradualSchedule.__dataclass_fields__}
        return GradualMagnitude(GradualPruning(**{**schedule, "name": "gradual", "target": compression}),
                                self.context, initial)  # fmt: skip

    def _next(self) -> float | None:
        progress = self.progress
        return next_compression(
            progress.passed, progress.step, progress.cap, progress.failures, self.ceiling, self.total
        )

    def prune(self, iteration: int, run: RunView) -> PruneStep | None:
        """Start this iteration's candidate from the model the run holds; the masks fall during retraining."""
        progress = self.progress
        if progress.dense_correct is None:  # the first candidate starts from the dense model
            progress.dense_correct, progress.step = run.validation_correct(), self.config.first
            progress.candidate = self._next()
            progress.step = self.config.growth  # from the first kept model on
        if progress.candidate is None:
            return None
        alive = sum(int(mask.sum()) for mask in run.masks.values())
        progress.initial = 1 - alive / sum(mask.numel() for mask in run.masks.values())
        self.gradual = self.candidate(progress.candidate, progress.initial)
        log.info(f"iteration {iteration}: candidate {progress.candidate:.4g}x, from {1 / (1 - progress.initial):.4g}x")
        return PruneStep(dict(run.masks), {})

    def during_retraining(self, iteration: int, step: int, steps: int, run: RunView) -> dict[str, Tensor] | None:
        return self.gradual.during_retraining(iteration, step, steps, run)

    def verdict(self, iteration: int, run: RunView) -> Verdict:
        """Within the budget when the paired upper bound of the drop is; then the next candidate, or the end."""
        progress, settings = self.progress, self.config
        paired = PairedDrop.between(progress.dense_correct, run.validation_correct())
        bound = paired.upper_bound(settings.confidence)
        within = bound <= settings.budget / 100 + 1e-12  # a bound of exactly the budget is within it
        log.info(
            f"iteration {iteration}: {progress.candidate:.4g}x lost {paired.lost} and gained {paired.gained} of "
            f"{paired.images:,} validation images: a drop of {100 * paired.drop:.2f} points, at most "
            f"{100 * bound:.2f} at {settings.confidence:.0%} confidence: {'within' if within else 'past'} the budget"
        )
        if within:  # the next one a step further; a model kept under restart=kept is a new start
            progress.passed, progress.kept = progress.candidate, iteration
            progress.step = min(progress.step, settings.growth)
            progress.cap = math.inf if settings.restart is Restart.kept else progress.cap
        else:  # rolled back: half the step that failed (in log-compression), never again this far from this start
            # (the next candidate is the midpoint; after a later one kept, the step is at most `growth` again)
            progress.step = math.sqrt(progress.candidate / progress.passed)
            progress.failures.append(progress.candidate)
            progress.cap = min(progress.cap, progress.candidate)
        progress.candidate = self._next() if iteration < settings.candidates else None
        stop = progress.candidate is None
        if stop:
            log.info(f"the search ends at {progress.passed:.4g}x (iteration {progress.kept}; 1x: the dense model)")
        if settings.restart is Restart.dense and not stop:
            return Verdict(rollback_to=0)  # the next candidate starts from the dense model again
        return Verdict(rollback_to=None if progress.kept == iteration else progress.kept, stop=stop)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.progress)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.progress = SearchProgress(**state)
        if self.progress.candidate is not None:
            self.gradual = self.candidate(self.progress.candidate, self.progress.initial)
