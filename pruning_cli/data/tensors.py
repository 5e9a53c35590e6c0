"""Data sets held in memory as tensors and batched by index: no per-sample Python, no worker processes."""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from pruning_cli.parallel.shard import SINGLE_PROCESS, Shard


def normalise(pixels: Tensor, mean: float, std: float) -> Tensor:
    """uint8 images (N, H, W) -> float32 (N, 1, H, W), scaled to [0, 1] and standardised."""
    return ((pixels.float() / 255 - mean) / std).unsqueeze(1)


def fit_images(images: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """(N, C, H, W) images as a model taking `shape` needs them: resized (bilinear) to its height and width, a
    single channel repeated to its channels (a view: no copy). ValueError for channels that cannot be repeated."""
    channels, height, width = shape
    if images.shape[1] not in (1, channels):
        raise ValueError(f"{images.shape[1]}-channel images cannot feed a model that takes {channels} channels")
    if tuple(images.shape[2:]) != (height, width):
        images = torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    return images.expand(-1, channels, -1, -1)


@dataclass
class TensorSplit:
    """One split (train or test): images and integer labels, on one device."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def num_batches(self, batch_size: int, shard: Shard = SINGLE_PROCESS) -> int:
        return shard.num_batches(len(self), batch_size)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shard: Shard = SINGLE_PROCESS
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Mini-batches in a random order drawn from `generator` (a CPU generator, so runs repeat on any device),
        or in storage order without one; with several processes, this process's part of each global batch."""
        if generator is None and not shard.distributed:
            for start in range(0, len(self), batch_size):  # views, no copy: the evaluation path
                yield self.images[start : start + batch_size], self.labels[start : start + batch_size]
            return
        order = torch.arange(len(self)) if generator is None else torch.randperm(len(self), generator=generator)
        for index in shard.global_batches(order.to(self.labels.device), batch_size):
            yield self.images[index], self.labels[index]

    def to(self, device: torch.device | str) -> "TensorSplit":
        return TensorSplit(self.images.to(device), self.labels.to(device))

    def subset(self, index: Tensor, held_out: bool = False) -> "TensorSplit":
        """The images at `index` (in memory there is no augmentation, so `held_out` changes nothing)."""
        return TensorSplit(self.images[index], self.labels[index])


@dataclass
class ImageData:
    """A classification data set: train and test splits and the number of classes.

    A split is an in-memory TensorSplit or, for image folders, a LoaderSplit with the same interface.
    """

    train: TensorSplit
    test: TensorSplit
    num_classes: int
    # Held out from the training data for choices made on data (sensitivity analysis); never the test set.
    val: TensorSplit | None = None
    # Held out after it, read by no choice: where a user without a test set learns whether a choice holds.
    confirm: TensorSplit | None = None
    # Files of an image folder left out as unreadable (dataset.skip_bad_images); None: not an image folder.
    skipped_images: int | None = None

    def to(self, device: torch.device | str) -> "ImageData":
        val, confirm = (None if split is None else split.to(device) for split in (self.val, self.confirm))
        return ImageData(
            self.train.to(device), self.test.to(device), self.num_classes, val, confirm, self.skipped_images
        )


VALIDATION_SPLIT_SEED = 0  # the same images are held out whatever the run's seed, so runs stay comparable


def hold_out_validation(data: ImageData, size: int, confirm: int = 0) -> ImageData:
    """Move `size` training images, drawn at random (fixed seed), into a validation split, and the next `confirm`
    of the same draw into a confirmation split (the validation images stay those of a run without one). Both are
    read as the test split is (no augmentation), so a decision sees the same images every time."""
    if size + confirm == 0:
        return data
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(VALIDATION_SPLIT_SEED))
    val = data.train.subset(order[:size], held_out=True) if size else None
    confirmation = data.train.subset(order[size : size + confirm], held_out=True) if confirm else None
    train = data.train.subset(order[size + confirm :])
    return ImageData(train, data.test, data.num_classes, val, confirmation, data.skipped_images)
