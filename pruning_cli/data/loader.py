"""A split read from files through a DataLoader (ImageNet-sized data sets that do not fit in memory).

It has the interface of the in-memory TensorSplit that the training loop and evaluation use: `batches`,
`num_batches`, `len()` and `device`. The batch order is drawn from the run's seeded CPU generator, exactly as
for TensorSplit, so a resumed run sees the same order; the random augmentation inside worker processes is seeded
per loader and is not part of the resumable state.
"""

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from pruning_cli.parallel.shard import SINGLE_PROCESS, Shard


class _BatchOrder(Sampler[list[int]]):
    """Yields the batches set before each epoch: the loader (and its persistent workers) lives across epochs."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class LoaderSplit:
    """One split of a map-style dataset of (image tensor, label), batched by a DataLoader, moved to `device`.
    `held_out_dataset`: the same images read with the evaluation transform, for the splits held out of it."""

    def __init__(
        self,
        dataset: Dataset,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        seed: int = 0,
        collate=None,
        held_out_dataset: Dataset | None = None,
    ) -> None:
        self.dataset, self.num_workers, self.seed, self.collate = dataset, num_workers, seed, collate
        self.held_out_dataset = held_out_dataset
        self.device = torch.device(device)
        self._loader: tuple[DataLoader, _BatchOrder] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def num_batches(self, batch_size: int, shard: Shard = SINGLE_PROCESS) -> int:
        return shard.num_batches(len(self), batch_size)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shard: Shard = SINGLE_PROCESS
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Mini-batches in a random order drawn from `generator` (as TensorSplit does), or in storage order;
        with several processes, this process's part of each global batch."""
        loader, batch_order = self._batch_loader(shard)
        order = torch.arange(len(self)) if generator is None else torch.randperm(len(self), generator=generator)
        batch_order.batches = [batch.tolist() for batch in shard.global_batches(order, batch_size)]
        non_blocking = self.device.type == "cuda"
        for images, labels in loader:
            if isinstance(images, list):  # encoded files (data/decode.py): their decoder puts them on the device
                yield images, labels
                continue
            yield images.to(self.device, non_blocking=non_blocking), labels.to(self.device, non_blocking=non_blocking)

    def _batch_loader(self, shard: Shard) -> tuple[DataLoader, _BatchOrder]:
        """One DataLoader for the split, kept so that persistent workers survive from one epoch to the next."""
        if self._loader is None:
            batch_order = _BatchOrder()
            loader = DataLoader(
                self.dataset,
                batch_sampler=batch_order,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0,
                collate_fn=self.collate,
                # each process augments with its own stream; the batch order is shared (see `batches`)
                generator=torch.Generator().manual_seed(self.seed + 1_000_003 * shard.rank),
            )
            self._loader = (loader, batch_order)
        return self._loader

    def to(self, device: torch.device | str) -> "LoaderSplit":
        return LoaderSplit(self.dataset, self.num_workers, device, self.seed, self.collate, self.held_out_dataset)

    def subset(self, index: Tensor, held_out: bool = False) -> "LoaderSplit":
        """The images at `index`; `held_out`: read as evaluation reads them (a validation split: no augmentation)."""
        indices = index.tolist()
        evaluated = None if self.held_out_dataset is None else Subset(self.held_out_dataset, indices)
        dataset = evaluated if held_out and evaluated is not None else Subset(self.dataset, indices)
        return LoaderSplit(dataset, self.num_workers, self.device, self.seed, self.collate, evaluated)
