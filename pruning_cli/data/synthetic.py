"""A small generated data set for smoke runs and tests: learnable, deterministic, no files."""

import torch
from torch.nn import functional

from pruning_cli.data.tensors import ImageData, TensorSplit

PROTOTYPE_STD = 0.2  # per-pixel std of the class prototypes, against unit noise: learnable, not trivial


def _prototypes(num_classes: int, image_shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """One smooth random image per class (coarse noise upsampled), so convolutions have structure to find."""
    channels, height, width = image_shape
    coarse = torch.randn(num_classes, channels, max(1, height // 4), max(1, width // 4), generator=generator)
    smooth = functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    smooth = smooth - smooth.mean(dim=(1, 2, 3), keepdim=True)
    return PROTOTYPE_STD * smooth / smooth.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def make_synthetic(
    num_train: int, num_test: int, num_classes: int, image_shape: tuple[int, int, int], seed: int
) -> ImageData:
    """Images = class prototype + unit Gaussian noise; labels drawn uniformly. Same arguments, same tensors."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = _prototypes(num_classes, image_shape, generator)

    def split(size: int) -> TensorSplit:
        labels = torch.randint(num_classes, (size,), generator=generator)
        images = prototypes[labels] + torch.randn(size, *image_shape, generator=generator)
        return TensorSplit(images, labels)

    return ImageData(split(num_train), split(num_test), num_classes)
