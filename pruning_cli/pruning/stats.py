"""Per-layer counts the paper's tables report: weights and FLOPs, total and non-zero."""

import torch
from torch import Tensor


def layer_stats(weight: Tensor, positions: int, groups: int = 1) -> dict[str, int | float]:
    """Weights total/non-zero, kept fraction, FLOPs per sample (a multiply-add counts 2, as in the paper) and the
    layer's dead units: inputs with no connection left and outputs with none (paper section 3.5).

    `positions` is the number of output positions per sample (H x W of a conv's output, 1 for a linear layer):
    each weight takes part in one multiply-add per position, grouped and depthwise convolutions included (their
    weight holds in_channels / `groups` inputs per filter).
    """
    total = weight.numel()
    nonzero = int(torch.count_nonzero(weight))
    dead_inputs, dead_outputs = dead_units(weight, groups)
    return {
        "weights_total": total,
        "weights_nonzero": nonzero,
        "kept": nonzero / total,
        "flops_total": 2 * total * positions,
        "flops_nonzero": 2 * nonzero * positions,
        "dead_inputs": int(dead_inputs.sum()),
        "dead_outputs": int(dead_outputs.sum()),
    }


def dead_units(weight: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """(dead inputs, dead outputs): inputs whose every connection is zero (an fc column, a conv input-channel
    slice across all filters) and outputs with no connection at all (an fc row, a whole conv filter). A grouped
    convolution's input channel is read by its own group's filters only: (groups x in / groups) inputs."""
    alive = weight.detach() != 0
    dead_outputs = ~alive.flatten(1).any(dim=1)
    per_group = alive.unflatten(0, (groups, -1)).transpose(1, 2)  # (groups, in / groups, out / groups, ...)
    dead_inputs = ~per_group.flatten(2).any(dim=2).flatten()
    return dead_inputs, dead_outputs
