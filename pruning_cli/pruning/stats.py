"""Per-layer counts the paper's tables report: weights and FLOPs, total and non-zero."""

import torch
from torch import Tensor


def layer_stats(weight: Tensor, positions: int) -> dict[str, int | float]:
    """Weights total/non-zero, kept fraction and FLOPs per sample (a multiply-add counts 2, as in the paper).

    `positions` is the number of output positions per sample (H x W of a conv's output, 1 for a linear layer):
    each weight takes part in one multiply-add per position.
    """
    total = weight.numel()
    nonzero = int(torch.count_nonzero(weight))
    return {
        "weights_total": total,
        "weights_nonzero": nonzero,
        "kept": nonzero / total,
        "flops_total": 2 * total * positions,
        "flops_nonzero": 2 * nonzero * positions,
    }
