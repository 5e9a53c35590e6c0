"""Random pruning (`pruning=random`): each iteration keeps a random share of every layer's survivors, the same share
in every layer, walked geometrically to `pruning.target`. A control for the other methods: one that does not beat
it has learned nothing from the weights (Blalock et al. 2020 call it a sanity check). The worked example of
docs/architecture.md: a policy is this module and configs/pruning/random.yaml."""

from dataclasses import dataclass

import torch

from pruning_cli.config.ranges import AT_LEAST_ONE, ranged
from pruning_cli.config.schema import MISSING, PruningConfig
from pruning_cli.policies.base import PolicyContext, PruneStep, PruningPolicy, RunView, check_target
from pruning_cli.pruning.allocation import Allocation, Sharing, allocate
from pruning_cli.pruning.masks import scheduled_fraction
from pruning_cli.pruning.step import cut_records


@dataclass
class RandomPruning(PruningConfig):
    # Compression of the prunable weights: how many times fewer remain after the last iteration (e.g. 12).
    target: float = ranged(AT_LEAST_ONE, MISSING)
    # Each removes the same share of the survivors: kept^(i / iterations) at iteration i
    iterations: int = ranged(AT_LEAST_ONE, 1)


class RandomBaseline(PruningPolicy):
    choices = ("random",)
    settings = RandomPruning
    runs_every_iteration = True

    def __init__(self, settings: RandomPruning, context: PolicyContext) -> None:
        super().__init__(settings, context)
        check_target(settings.target, context)

    def prune(self, iteration: int, run: RunView) -> PruneStep:
        """Random scores, drawn from the run's seed and the iteration (a resumed run draws the same), cut per layer."""
        generator = torch.Generator().manual_seed(self.context.seed * 1_000 + iteration)
        scores = {name: torch.rand(weight.shape, generator=generator) for name, weight in run.weights.items()}
        total = sum(weight.numel() for weight in run.weights.values())
        keep = round(total * scheduled_fraction(1 / self.config.target, iteration, self.config.iterations))
        masks = {name: mask.cpu() for name, mask in run.masks.items()}
        new_masks = allocate(Allocation(sharing=Sharing.uniform), scores, masks, keep)
        new_masks = {name: mask.to(run.masks[name].device) for name, mask in new_masks.items()}
        return PruneStep(new_masks, cut_records(run.weights, run.masks, new_masks))
