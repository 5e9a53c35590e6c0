"""Layer sensitivity (paper Fig. 6): prune one layer at a time at increasing levels and evaluate, no retraining.

Run on a validation split held out from the training data, so that the thresholds it leads to are never chosen
on the test set. Each point prunes through the pipeline's own `prune_step` (the same rule, std and cap), from
the same trained weights: each layer is restored after its levels.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict

import torch
from torch import Tensor, nn

from pruning_cli.config.schema import LevelKind
from pruning_cli.data.tensors import TensorSplit
from pruning_cli.pruning.step import LayerStep, prune_step
from pruning_cli.pruning.targets import LayerTarget
from pruning_cli.training.loop import evaluate

BASELINE_LAYER = "none"  # the row of the unpruned model, for the curves' starting point


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    data: TensorSplit,
    levels: Sequence[float],
    kind: LevelKind,
    batch_size: int,
) -> Iterator[dict[str, float | str]]:
    """Rows of sensitivity.csv: the model as given (the baseline), then one per (layer, level) with that layer alone
    pruned further from its `masks` (all True for a dense model; a pruned model's zeros stay pruned)."""
    baseline = {"layer": BASELINE_LAYER, "sensitivity": 0.0, "threshold": 0.0, "kept": 1.0}
    yield baseline | _evaluate(model, data, batch_size)
    for name, weight in weights.items():
        trained = weight.detach().clone()
        alive = {name: masks[name]}
        for level in levels:
            target = LayerTarget(sensitivity=level) if kind is LevelKind.sensitivity else LayerTarget(kept=level)
            pruned_masks, records = prune_step({name: trained}, alive, {name: LayerStep(target)})
            weight.copy_(trained * pruned_masks[name])
            pruned = records[name]
            point = {"layer": name, "sensitivity": pruned.sensitivity, "threshold": pruned.threshold}
            yield point | {"kept": pruned.kept / trained.numel()} | _evaluate(model, data, batch_size)
        weight.copy_(trained)


def _evaluate(model: nn.Module, data: TensorSplit, batch_size: int) -> dict[str, float]:
    return asdict(evaluate(model, data, batch_size))
