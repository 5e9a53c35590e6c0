"""One pruning step (Han et al. 2015, section 3): the paper's rule, whole, as a pure function on tensors.

Every layer the step prunes loses each surviving weight with `|w| < sensitivity x std`, or keeps the largest
`kept^(step/steps)` of its weights when it walks to a final kept fraction. The iterative pipeline and the
sensitivity analysis both prune through `prune_step`, so they cannot disagree on the rule.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from pruning_cli.pruning.masks import scheduled_fraction, strongest_per_output, threshold_mask, top_fraction_mask
from pruning_cli.pruning.schedule import Turn
from pruning_cli.pruning.targets import LayerTarget


@dataclass(frozen=True)
class LayerStep:
    """What one step does to one layer: its target, and where the step is in the layer's own schedule."""

    target: LayerTarget
    turn: Turn = Turn(1, 1)


@dataclass(frozen=True)
class LayerPruned:
    """The record of one layer's step: the std and threshold used, the weights kept, and whether the cap acted."""

    std: float
    threshold: float
    kept: int
    capped: bool = False

    @property
    def sensitivity(self) -> float | None:
        """The threshold in units of std: the paper's quality parameter, also for a kept-fraction target."""
        return self.threshold / self.std if self.std else None


def prune_step(
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    plan: Mapping[str, LayerStep],
    dense_std: Mapping[str, float] | None = None,
) -> tuple[dict[str, Tensor], dict[str, LayerPruned]]:
    """New masks for the layers in `plan` (the others keep theirs) and a record per pruned layer.

    The std is of each layer's surviving weights, or `dense_std[name]` when given (the std of the dense weights,
    fixed at the first pruning). Masks only shrink. A step that would remove every weight of a layer would cut the
    network in two; it is capped instead: each output unit keeps its largest surviving weight.
    """
    new_masks, records = dict(masks), {}
    for name, layer in plan.items():
        weight, mask = weights[name].detach(), masks[name]
        std = dense_std[name] if dense_std is not None else surviving_std(weight, mask)
        new_mask, threshold = _layer_mask(weight, mask, layer, std)
        capped = not bool(new_mask.any())
        if capped:
            new_mask = strongest_per_output(weight, mask)
        new_masks[name] = new_mask
        records[name] = LayerPruned(std, threshold, int(torch.count_nonzero(new_mask)), capped)
    return new_masks, records


def surviving_std(weight: Tensor, mask: Tensor) -> float:
    """The std the threshold multiplies: of the weights still alive (unbiased, as torch.std)."""
    return weight.detach()[mask].float().std().item()


def _layer_mask(weight: Tensor, mask: Tensor, layer: LayerStep, std: float) -> tuple[Tensor, float]:
    """The mask one layer's target gives at its turn, and the magnitude threshold it amounts to."""
    if layer.target.kept is not None:
        fraction = scheduled_fraction(layer.target.kept, layer.turn.step, layer.turn.steps)
        return top_fraction_mask(weight, fraction, mask)
    threshold = layer.target.sensitivity * std
    return threshold_mask(weight, threshold, mask), threshold


def cut_records(
    weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], new_masks: Mapping[str, Tensor]
) -> dict[str, LayerPruned]:
    """The record of a step that chose `new_masks` by some other rule than a per-layer threshold: per layer, the
    std of its survivors before the step, the smallest magnitude it kept (the threshold the cut amounts to in that
    layer), and its survivors after."""
    records = {}
    for name, weight in weights.items():
        kept = weight.detach().abs()[new_masks[name]]
        threshold = kept.min().item() if kept.numel() else float("inf")
        records[name] = LayerPruned(
            surviving_std(weight, masks[name]), threshold, int(torch.count_nonzero(new_masks[name]))
        )
    return records
