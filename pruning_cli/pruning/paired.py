"""How much a model loses against another on the same images, with an upper confidence bound that holds.

Only the images on which the two disagree carry information about the difference (McNemar): of the n images,
`lost` were right before and are wrong now, `gained` the reverse, and the drop in top-1 is (lost - gained) / n.
The number of disagreements is itself random, so a bound that conditions on it under-covers when losses outnumber
gains, a pruned model's usual case. The bound here is Tango's score bound for the difference of paired
proportions (Tango 1998, Statistics in Medicine 17:891-908): the largest difference d0 that a one-sided score test
does not reject, each d0 tested with the variance at its restricted maximum-likelihood estimate.
"""

from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

GRID, ROUNDS = 64, 6  # each round narrows [drop seen, 1] 64-fold: to 1e-11, below any drop n images show


def tango_statistic(lost: Tensor, gained: Tensor, images: Tensor, difference: Tensor) -> Tensor:
    """Tango's score statistic T(d0) for the paired difference (lost - gained) / images at d0 = `difference`.

    The "gained" cell's restricted maximum-likelihood estimate under d0 is p = (sqrt(B^2 - 4AC) - B) / (2A), with
    A = 2n, B = -lost - gained + (2n - lost + gained) d0 and C = -gained d0 (1 - d0); the variance of lost - gained
    under d0 is n (2p + d0 (1 - d0)). Element-wise on float64 tensors; -inf (or +inf) where that variance is 0.
    """
    n, d0 = images, difference
    a = 2 * n
    b = -lost - gained + (2 * n - lost + gained) * d0
    c = -gained * d0 * (1 - d0)
    p = ((b * b - 4 * a * c).clamp(min=0).sqrt() - b) / (2 * a)
    variance = n * (2 * p + d0 * (1 - d0))
    excess = lost - gained - n * d0
    return excess / variance.clamp(min=0).sqrt()


def tango_upper_bound(lost: Tensor, gained: Tensor, images: Tensor, confidence: float) -> Tensor:
    """The one-sided upper bound of (lost - gained) / images at `confidence`: the d0 above the drop seen where
    T(d0) = -z. T falls as d0 rises, so a grid of d0 narrowed round by round finds it. Element-wise (any
    broadcastable shapes)."""
    lost, gained, images = (torch.as_tensor(x, dtype=torch.float64) for x in (lost, gained, images))
    lost, gained, images = (x.unsqueeze(-1) for x in torch.broadcast_tensors(lost, gained, images))
    z = NormalDist().inv_cdf(confidence)
    low, high = (lost - gained) / images, torch.ones_like(lost)
    fractions = torch.linspace(0, 1, GRID + 1, dtype=torch.float64)
    for _ in range(ROUNDS):
        grid = low + (high - low) * fractions
        first_rejected = (tango_statistic(lost, gained, images, grid) < -z).long().argmax(-1, keepdim=True)
        first_rejected = torch.where(first_rejected == 0, GRID, first_rejected)  # none rejected: only d0 = 1 left
        low, high = grid.gather(-1, first_rejected - 1), grid.gather(-1, first_rejected)
    return high.squeeze(-1)


@dataclass(frozen=True)
class PairedDrop:
    """Top-1 lost on `images` shared images: `lost` were right and are wrong, `gained` the reverse."""

    images: int
    lost: int
    gained: int

    @classmethod
    def between(cls, before: Tensor, after: Tensor) -> "PairedDrop":
        """From two per-image correctness vectors (bool) of the same images."""
        if before.shape != after.shape:
            raise ValueError(f"compared on different images: {tuple(before.shape)} and {tuple(after.shape)}")
        return cls(len(before), int((before & ~after).sum()), int((~before & after).sum()))

    @property
    def drop(self) -> float:
        """Top-1 lost, as a fraction (negative: gained)."""
        return (self.lost - self.gained) / self.images

    def upper_bound(self, confidence: float) -> float:
        """The drop that the true one stays under with probability `confidence` (one-sided; 0.5: the drop seen)."""
        if confidence == 0.5:
            return self.drop
        return float(tango_upper_bound(self.lost, self.gained, self.images, confidence))
