"""How much a model loses against another on the same images, with an upper confidence bound that fits the noise.

Only the images on which the two disagree carry information about the difference: of the m disagreements, `lost`
were right before and are wrong now, `gained` the reverse. Given m, `lost` is binomial with probability q, and the
drop in top-1 is (2q - 1) m / n (McNemar's conditioning). The bound takes the Wilson score interval's upper end for
q: it needs no table, stays inside [0, 1] for small m, and is exact enough at the hundreds of disagreements a
pruned model has with its dense parent on 5,000 images.
"""

import math
from dataclasses import dataclass
from statistics import NormalDist

from torch import Tensor


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
        disagreements = self.lost + self.gained
        if disagreements == 0:
            return 0.0
        z, m, share = NormalDist().inv_cdf(confidence), disagreements, self.lost / disagreements
        spread = z * math.sqrt(share * (1 - share) / m + z * z / (4 * m * m))
        upper_share = (share + z * z / (2 * m) + spread) / (1 + z * z / m)
        return (2 * upper_share - 1) * m / self.images
