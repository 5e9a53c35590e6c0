"""Global magnitude pruning (`pruning=global`): one magnitude threshold across all prunable layers, walked
geometrically to a compression target over `iterations` prune -> retrain steps, each layer keeping at least
`min_kept` of its weights (Blalock et al. 2020 list it among the strongest simple baselines)."""

from dataclasses import dataclass

from pruning_cli.config.ranges import AT_LEAST_ONE, FRACTION, ranged
from pruning_cli.config.schema import MISSING, PruningConfig
from pruning_cli.errors import UserError
from pruning_cli.policies.base import PolicyContext, PruneStep, PruningPolicy, RunView, check_floors, check_target
from pruning_cli.pruning.allocation import Allocation, Scoring, Sharing, allocate
from pruning_cli.pruning.masks import scheduled_fraction
from pruning_cli.pruning.step import cut_records


@dataclass
class GlobalPruning(PruningConfig):
    # Compression of the prunable weights: how many times fewer remain after the last iteration (e.g. 12).
    target: float = ranged(AT_LEAST_ONE, MISSING)
    # Each removes the same share of the survivors: kept^(i / iterations) at iteration i
    iterations: int = ranged(AT_LEAST_ONE, 3)
    # The fraction of each layer's weights that no cut removes (at least one weight), so that no layer is cut off.
    min_kept: float = ranged(FRACTION, 0.01)


class GlobalMagnitude(PruningPolicy):
    choices = ("global",)
    settings = GlobalPruning
    allocation = Allocation(Scoring.magnitude, Sharing.global_)

    def __init__(self, settings: GlobalPruning, context: PolicyContext) -> None:
        super().__init__(settings, context)
        keep = check_target(settings.target, context)
        check_floors(keep, settings.min_kept, context, lamp=self.allocation.floored)

    def prune(self, iteration: int, run: RunView) -> PruneStep:
        """The survivors of one cut at this iteration's point of the geometric walk to the target."""
        total = sum(weight.numel() for weight in run.weights.values())
        keep = round(total * scheduled_fraction(1 / self.config.target, iteration, self.config.iterations))
        try:  # checked before any work for the model's 10-class sizes; here for its real ones
            masks = allocate(self.allocation, run.weights, run.masks, keep, self.config.min_kept)
        except ValueError as error:
            raise UserError(f"{error}: lower pruning.min_kept or pruning.target") from error
        return PruneStep(masks, cut_records(run.weights, run.masks, masks))
