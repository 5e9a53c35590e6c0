"""Layer sensitivity (paper Fig. 6): prune one layer at a time at increasing levels and evaluate, no retraining.

Run on a validation split held out from the training data, so that the thresholds it leads to are never chosen
on the test set. Every point starts from the same trained weights: each layer is restored after its levels.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict

import torch
from torch import Tensor, nn

from pruning_cli.config import LevelKind
from pruning_cli.data.tensors import TensorSplit
from pruning_cli.errors import UserError
from pruning_cli.pruning.masks import threshold_mask, top_fraction_mask
from pruning_cli.training.loop import evaluate

BASELINE_LAYER = "none"  # the row of the unpruned model, for the curves' starting point


def check_levels(levels: Sequence[float], kind: LevelKind) -> None:
    """Refuse levels no pruning step could use, before any training."""
    if not levels:
        raise UserError("pruning.levels is empty; give at least one level, e.g. pruning.levels=[0.5,1.0]")
    for level in levels:
        if kind is LevelKind.sensitivity and level < 0:
            raise UserError(f"sensitivity level {level} is negative; levels must be >= 0 (threshold = level x std)")
        if kind is LevelKind.kept and not 0 < level <= 1:
            raise UserError(f"kept level {level} is outside (0, 1]; it is the fraction of the layer's weights kept")


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    weights: Mapping[str, Tensor],
    data: TensorSplit,
    levels: Sequence[float],
    kind: LevelKind,
    batch_size: int,
) -> Iterator[dict[str, float | str]]:
    """Rows of sensitivity.csv: the unpruned baseline, then one per (layer, level) with that layer alone pruned."""
    baseline = {"layer": BASELINE_LAYER, "sensitivity": 0.0, "threshold": 0.0, "kept": 1.0}
    yield baseline | _evaluate(model, data, batch_size)
    for name, weight in weights.items():
        trained = weight.detach().clone()
        std = trained.std().item()
        for level in levels:
            if kind is LevelKind.sensitivity:
                threshold = level * std
                mask = threshold_mask(trained, threshold)
            else:
                mask, threshold = top_fraction_mask(trained, level)
            weight.copy_(trained * mask)
            point = {"layer": name, "sensitivity": threshold / std, "threshold": threshold}
            yield point | {"kept": mask.float().mean().item()} | _evaluate(model, data, batch_size)
        weight.copy_(trained)


def _evaluate(model: nn.Module, data: TensorSplit, batch_size: int) -> dict[str, float]:
    return asdict(evaluate(model, data, batch_size))
