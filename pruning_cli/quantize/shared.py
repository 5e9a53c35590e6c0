"""Fine-tuning shared values through the weights that use them."""

from collections.abc import Mapping
from functools import partial

import torch
from torch import Tensor

from pruning_cli.quantize.kmeans import Codebook, cluster_gradient


class SharedGradients:
    """While active, every weight's gradient is the summed gradient of its cluster (`cluster_gradient`), so that
    an ordinary optimizer step on the weights is a step on the shared values (Deep Compression, sec. 3.3).

    A tensor hook runs before the gradient is accumulated (and before DDP averages it: the sum is linear, so the
    order does not matter). The weights must hold their codebook's values when it starts.
    """

    def __init__(self, weights: Mapping[str, Tensor], codebooks: Mapping[str, Codebook]) -> None:
        self.hooks = []
        for name, book in codebooks.items():
            positions, clusters = book.survivors()
            hook = partial(cluster_gradient, codebook_size=len(book.centroids), positions=positions, clusters=clusters)
            self.hooks.append((weights[name], hook))
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "SharedGradients":
        self.handles = [weight.register_hook(hook) for weight, hook in self.hooks]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
