"""A split read from files through a DataLoader (ImageNet-sized data sets that do not fit in memory).

It has the interface of the in-memory TensorSplit that the training loop and evaluation use: `batches`,
`num_batches`, `len()` and `device`. The batch order is drawn from the run's seeded CPU generator, exactly as
for TensorSplit, so a resumed run sees the same order; the random augmentation inside worker processes is seeded
per loader and is not part of the resumable state.
"""

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset


class _OrderSampler(Sampler[int]):
    """Yields the order set before each epoch: the loader (and its persistent workers) lives across epochs."""

    def __init__(self, size: int) -> None:
        self.order: Sequence[int] = range(size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class LoaderSplit:
    """One split of a map-style dataset of (image tensor, label), batched by a DataLoader, moved to `device`."""

    def __init__(
        self, dataset: Dataset, num_workers: int = 0, device: torch.device | str = "cpu", seed: int = 0
    ) -> None:
        self.dataset, self.num_workers, self.seed = dataset, num_workers, seed
        self.device = torch.device(device)
        self._loaders: dict[int, tuple[DataLoader, _OrderSampler]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Mini-batches in a random order drawn from `generator` (as TensorSplit does), or in storage order."""
        loader, sampler = self._loader(batch_size)
        order = None if generator is None else torch.randperm(len(self), generator=generator)
        sampler.order = range(len(self)) if order is None else order.tolist()
        non_blocking = self.device.type == "cuda"
        for images, labels in loader:
            yield images.to(self.device, non_blocking=non_blocking), labels.to(self.device, non_blocking=non_blocking)

    def _loader(self, batch_size: int) -> tuple[DataLoader, _OrderSampler]:
        """One DataLoader per batch size, kept so that persistent workers survive from one epoch to the next."""
        if batch_size not in self._loaders:
            sampler = _OrderSampler(len(self))
            loader = DataLoader(
                self.dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.num_workers > 0,
                generator=torch.Generator().manual_seed(self.seed),
            )  # fmt: skip
            self._loaders[batch_size] = (loader, sampler)
        return self._loaders[batch_size]

    def to(self, device: torch.device | str) -> "LoaderSplit":
        return LoaderSplit(self.dataset, self.num_workers, device, self.seed)

    def subset(self, index: Tensor) -> "LoaderSplit":
        return LoaderSplit(Subset(self.dataset, index.tolist()), self.num_workers, self.device, self.seed)
