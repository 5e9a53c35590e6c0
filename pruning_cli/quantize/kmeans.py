"""Weight sharing by 1-D k-means over a layer's surviving weights, initialised linearly as in Deep Compression.

A layer quantized to `bits` stores, for each surviving weight, a `bits`-bit index into its codebook. Index 0 is
kept for the value 0 (the filler entries of the sparse format carry it), so a layer shares at most 2^bits - 1
values: 31 for fc (5 bits), 255 for conv (8 bits). Deep Compression found linear initialisation (centroids spread
evenly between the smallest and the largest weight) best: it keeps a few centroids on the rare large weights, which
matter most, where density-based starts put them all near zero.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Codebook:
    """A layer's shared values and, for every weight, the index of its value (0 for a pruned weight).

    `centroids[0]` is 0.0; `assignments` has the weight's shape, so `centroids[assignments]` is the quantized
    weight, pruned entries included.
    """

    centroids: Tensor
    assignments: Tensor

    def weight(self) -> Tensor:
        return self.centroids[self.assignments]

    def state(self) -> dict[str, Tensor]:
        """What a run's state file keeps of it (indices as bytes: at most 8 bits)."""
        return {"centroids": self.centroids, "assignments": self.assignments.to(torch.uint8)}

    @classmethod
    def from_state(cls, state: dict[str, Tensor], device: torch.device) -> "Codebook":
        return cls(state["centroids"].to(device), state["assignments"].to(device).long())

    def survivors(self) -> tuple[Tensor, Tensor]:
        """The flat positions of the weights that share a value (index > 0), and their indices."""
        flat = self.assignments.flatten()
        positions = flat.nonzero().flatten()
        return positions, flat[positions]


def shared_values(bits: int) -> int:
    """How many values a layer quantized to `bits`-bit indices shares (index 0 is the zero of filler entries)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"quantization bits must be 1..8, got {bits}")
    return 2**bits - 1


def linear_centroids(values: Tensor, count: int) -> Tensor:
    """`count` centroids spaced evenly from min(values) to max(values) (one at their mean if count is 1)."""
    if count == 1:
        return values.mean().reshape(1)
    return torch.linspace(float(values.min()), float(values.max()), count, dtype=values.dtype, device=values.device)


def kmeans_1d(values: Tensor, centroids: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on scalars from `centroids`; return the centroids and each value's cluster.

    In one dimension the nearest centroid is found by sorting the centroids and bisecting the midpoints between
    neighbours: O(n log k) per iteration and no n x k distance matrix. A cluster that loses all its values keeps
    its centroid. Stops early when no assignment changes.
    """
    centroids = centroids.clone()
    assignment = None
    for _ in range(max(iterations, 1)):
        centroids = centroids.sort().values
        new_assignment = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums = torch.zeros_like(centroids).index_add_(0, assignment, values)
        counts = torch.zeros_like(centroids).index_add_(0, assignment, torch.ones_like(values))
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids, new_assignment


def quantize_layer(weight: Tensor, mask: Tensor, bits: int, iterations: int = 30) -> Codebook:
    """Cluster the surviving weights (`mask`) of one layer into at most 2^bits - 1 shared values."""
    survivors = weight.detach()[mask].float()
    count = min(shared_values(bits), survivors.numel())
    if count == 0:
        centroids = torch.zeros(1, dtype=weight.dtype, device=weight.device)
        return Codebook(centroids, torch.zeros_like(weight, dtype=torch.long))
    centroids, clusters = kmeans_1d(survivors, linear_centroids(survivors, count), iterations)
    assignments = torch.zeros_like(weight, dtype=torch.long)
    assignments[mask] = clusters + 1
    zero = centroids.new_zeros(1)
    return Codebook(torch.cat([zero, centroids]).to(weight.dtype), assignments)


def cluster_gradient(gradient: Tensor, codebook_size: int, positions: Tensor, clusters: Tensor) -> Tensor:
    """The gradient of the loss with respect to each weight's shared value, given back at every weight: per
    cluster the sum of its weights' gradients (Deep Compression, eq. 3), and 0 for pruned weights.

    `positions` are the flat indices of the surviving weights and `clusters` their codebook indices (1..); only
    they are read and written, a tenth of the layer after pruning. Every weight of a cluster receives the same
    number, so an optimizer step (momentum and weight decay included) moves them alike and they stay equal:
    fine-tuning the weights is fine-tuning the shared values.
    """
    sums = gradient.new_zeros(codebook_size).index_add_(0, clusters, gradient.flatten()[positions])
    flat = gradient.new_zeros(gradient.numel())
    flat[positions] = sums[clusters]
    return torch.empty_like(gradient).copy_(flat.view(gradient.shape))  # in the gradient's memory format


@torch.no_grad()
def quantize_layers(
    weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], bits: Mapping[str, int], iterations: int
) -> dict[str, Codebook]:
    """Cluster each layer of `bits` (`quantize_layer`) and set its weights to their shared values, in place."""
    codebooks = {}
    for name, layer_bits in bits.items():
        codebooks[name] = quantize_layer(weights[name], masks[name], layer_bits, iterations)
        weights[name].copy_(codebooks[name].weight())
    return codebooks
