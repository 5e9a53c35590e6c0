"""LAMP (`pruning=lamp`, Lee et al. 2021): each weight scored by w_u^2 / sum_{v >= u} w_v^2 within its layer
(weights sorted by magnitude), then one global cut on the scores; otherwise as `pruning=global`."""

from dataclasses import dataclass

from pruning_cli.config.ranges import FRACTION, ranged
from pruning_cli.policies.global_magnitude import GlobalMagnitude, GlobalPruning
from pruning_cli.pruning.allocation import Allocation, Scoring, Sharing


@dataclass
class LampPruning(GlobalPruning):
    # LAMP's cut keeps at least one weight of each layer whatever this is (each layer's largest scores 1); a share
    # here is a floor as pruning=global's.
    min_kept: float = ranged(FRACTION, 0.0)


class Lamp(GlobalMagnitude):
    choices = ("lamp",)
    settings = LampPruning
    allocation = Allocation(Scoring.lamp, Sharing.global_)
