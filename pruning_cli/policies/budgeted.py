"""Budgeted pruning (`pruning=auto`): the highest compression on one walk down the pruning path whose top-1 drop
against the dense model, on the validation split, stays within the budget at the stated confidence.

The walk is fixed before any validation image is read: walk step k prunes the current model to `first` x
`ratio`^(k-1) (gradually within its retraining phase, policies/gradual.py, scored and shared as chosen) and
retrains it. After each walk step the model is tested against the dense model on the validation split with Tango's
paired bound (pruning/paired.py); the first walk step whose bound is past the budget ends the walk, and the result
is the last one within it (the dense model if none is). This is fixed-sequence testing (Maurer, Hothorn and
Lehmacher 1995): the order of the tested models never depends on validation data, so the chance that the result is
past the budget is at most about 1 - confidence, however many walk steps are tested (Tango's bound is a
large-sample one: within 0.02 of it when the budget is worth 10 validation images or more; the walk warns below
that). Nothing is retried: a second try at a compression would be a second draw at the same threshold. Each walk
step's figures are in metrics.csv.
"""

import logging
from dataclasses import asdict, dataclass

from torch import Tensor

from pruning_cli.config.ranges import AT_LEAST_ONE, NON_NEGATIVE, Range, ranged
from pruning_cli.policies.base import PolicyContext, PruneStep, PruningPolicy, RunView, Verdict, floor_total
from pruning_cli.policies.gradual import GradualMagnitude, GradualPruning, GradualSchedule, allocation_of
from pruning_cli.pruning.allocation import Sharing
from pruning_cli.pruning.masks import count_nonzero
from pruning_cli.pruning.paired import PairedDrop

log = logging.getLogger(__name__)
ABOVE_ONE = Range(1, low_open=True)


@dataclass
class AutoPruning(GradualSchedule):
    """pruning=auto. The schedule fields (scoring, sharing, start, end, frequency, min_kept) shape each walk step's
    gradual pruning within its retraining phase; the others, the walk and its test."""

    # Points of validation top-1 the result may lose against the dense model.
    budget: float = ranged(NON_NEGATIVE, 0.3)
    # One-sided: the result's true drop is within the budget with at least this probability.
    confidence: float = ranged(Range(0.5, 1, high_open=True), 0.8)
    first: float = ranged(ABOVE_ONE, 8.0)  # the compression of the first walk step
    ratio: float = ranged(ABOVE_ONE, 1.25)  # each later walk step's compression over the one before
    max_steps: int = ranged(AT_LEAST_ONE, 20)  # walk steps at most, one retraining phase each


@dataclass
class WalkProgress:
    """Where the walk stands: the dense model's per-image correctness on the validation split (read once, at the
    first walk step), the last walk step within the budget (0: the dense model), and the compression and starting
    sparsity of the walk step being retrained."""

    dense_correct: Tensor | None = None
    kept: int = 0
    compression: float | None = None
    initial: float = 0.0


class BudgetedWalk(PruningPolicy):
    choices = ("auto",)
    settings = AutoPruning
    reads_validation = True

    def __init__(self, settings: AutoPruning, context: PolicyContext) -> None:
        super().__init__(settings, context)
        if not context.validation:
            raise ValueError("pruning=auto chooses on held-out training data: set dataset.val_split=N (e.g. 5000)")
        self.total = sum(context.layer_sizes.values())
        self.walk_step(settings.first, 0.0)  # the schedule's settings, checked before any work
        self.progress, self.gradual = WalkProgress(), None

    @property
    def iterations(self) -> int:
        return self.config.max_steps

    def compression(self, step: int) -> float:
        """Walk step `step`'s compression, fixed by the settings alone (1-based)."""
        return self.config.first * self.config.ratio ** (step - 1)

    def floors(self) -> int:
        """Weights the per-layer floor of a global cut keeps whatever the compression (the check each walk step's
        gradual schedule makes, policies/base.check_floors)."""
        allocation = allocation_of(self.config)
        if allocation.sharing is not Sharing.global_:
            return 0
        return floor_total(self.config.min_kept, self.context, lamp=allocation.floored)

    def walk_step(self, compression: float, initial: float) -> GradualMagnitude:
        """Gradual pruning to `compression` within one retraining phase, from sparsity `initial`."""
        schedule = {name: getattr(self.config, name) for name in GradualSchedule.__dataclass_fields__}
        settings = GradualPruning(**{**schedule, "name": "gradual", "target": compression})
        return GradualMagnitude(settings, self.context, initial)

    def prune(self, iteration: int, run: RunView) -> PruneStep | None:
        """Start walk step `iteration` from the model the run holds (the masks fall during retraining); None when
        the walk has no weight left to remove: its compression keeps no fewer than now, or less than the floors."""
        progress = self.progress
        if progress.dense_correct is None:
            progress.dense_correct = run.validation_correct()
            warn_small_budget(self.config.budget, len(progress.dense_correct))
        compression = self.compression(iteration)
        keep, alive = round(self.total / compression), count_nonzero(run.masks.values())
        if keep >= alive or keep < max(1, self.floors()):
            log.info(f"walk step {iteration}: {compression:.4g}x leaves no weight to remove; the walk ends")
            return None
        progress.compression, progress.initial = compression, 1 - alive / self.total
        self.gradual = self.walk_step(compression, progress.initial)
        log.info(f"walk step {iteration}: to {compression:.4g}x, from {self.total / alive:.4g}x")
        return PruneStep(dict(run.masks), {})

    def during_retraining(
        self, iteration: int, optimizer_step: int, optimizer_steps: int, run: RunView
    ) -> dict[str, Tensor] | None:
        return self.gradual.during_retraining(iteration, optimizer_step, optimizer_steps, run)

    def verdict(self, iteration: int, run: RunView) -> Verdict:
        """Within the budget when Tango's upper bound of the drop is: the walk goes on. Past it: the walk ends on
        the last walk step within it."""
        progress, settings = self.progress, self.config
        paired = PairedDrop.between(progress.dense_correct, run.validation_correct())
        bound = paired.upper_bound(settings.confidence)
        within = bound <= settings.budget / 100 + 1e-12  # a bound of exactly the budget is within it
        log.info(
            f"walk step {iteration}: {progress.compression:.4g}x lost {paired.lost} and gained {paired.gained} of "
            f"{paired.images:,} validation images: a drop of {100 * paired.drop:.2f} points, at most "
            f"{100 * bound:.2f} at {settings.confidence:.0%} confidence: {'within' if within else 'past'} the budget"
        )
        figures = {
            "val_lost": paired.lost,
            "val_gained": paired.gained,
            "val_drop": paired.drop,
            "val_bound": bound,
            "verdict": "within" if within else "past",
        }
        if within:
            progress.kept = iteration
        stop = not within or iteration == settings.max_steps
        if stop:
            kept = self.compression(progress.kept) if progress.kept else 1.0
            log.info(f"the walk ends at {kept:.4g}x (walk step {progress.kept}; 0: dense)")
        return Verdict(rollback_to=None if within else progress.kept, stop=stop, figures=figures)

    def state_dict(self) -> dict:
        return asdict(self.progress)

    def load_state_dict(self, state: dict) -> None:
        self.progress = WalkProgress(**state)
        if self.progress.compression is not None:
            self.gradual = self.walk_step(self.progress.compression, self.progress.initial)


def warn_small_budget(budget: float, images: int) -> None:
    """Tango's bound is a large-sample one: when the budget is worth fewer than 10 validation images, its coverage
    (and so the walk's guarantee) can fall several points short of the confidence."""
    worth = budget / 100 * images
    if worth < 10:
        log.warning(
            f"pruning.budget={budget} is worth {worth:.3g} of the {images:,} validation images: the bound is "
            "approximate below 10 (its coverage can fall to about 0.71-0.76 at 0.8); hold out more images "
            "(dataset.val_split) for the stated confidence"
        )
