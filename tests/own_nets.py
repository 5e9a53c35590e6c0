"""Small modules of a user's own, for `model=custom model._target_=own_nets.<Name>` in the tests."""

import torch
from torch import nn


class TinyNet(nn.Module):
    """A convolution, a depthwise one, and a classifier behind a dropout: every kind of prunable layer."""

    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, groups=width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(16 * width, classes))

    def forward(self, images):
        return self.head(self.features(images))


class NoWeights(nn.Module):
    def forward(self, images):
        return images.flatten(1)[:, :10]


class TokenMixer(nn.Module):
    """A Linear applied to a sequence (7 x 7 = 49 tokens), as in ConvNeXt and ViT blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 4, stride=4)  # 28 x 28 -> 7 x 7
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, images):
        tokens = self.stem(images).flatten(2).transpose(1, 2)  # (N, 49, 8)
        return self.head(self.mix(tokens).mean(dim=1))


class Functional(nn.Module):
    """A Linear whose weight is used through torch.nn.functional, never called as a module."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(784, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, images):
        return self.head(nn.functional.linear(images.flatten(1), self.hidden.weight, self.hidden.bias))


class Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(784, 10)

    def forward(self, images):
        raise ValueError("this module wants 32 x 32 images")


class Wide(nn.Module):
    """Three Linear layers; only the middle one (64 x 64) has a shape the 2:4 kernels take."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, images):
        return self.layers(images)


class Scaled(nn.Module):
    """A classifier that scales its input by a constant buffer kept out of its state_dict (persistent=False)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(0.5), persistent=False)
        self.head = nn.Linear(784, 10)

    def forward(self, images):
        return self.head(images.flatten(1) * self.scale)


class Offset(nn.Module):
    """A classifier that adds a constant tensor held as a plain attribute (neither a parameter nor a buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.full((10,), 0.25)
        self.head = nn.Linear(784, 10)

    def forward(self, images):
        return self.head(images.flatten(1)) + self.offset


class Tied(nn.Module):
    """Two Linear layers that share one weight (as a language model ties its embedding and its output)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.outer = nn.Linear(784, 784, bias=False), nn.Linear(784, 10)
        self.twin = nn.Linear(784, 784, bias=False)
        self.twin.weight = self.inner.weight

    def forward(self, images):
        return self.outer(self.twin(self.inner(images.flatten(1))))


class Eigen(nn.Module):
    """A classifier that adds the eigenvalues of a patch: aten.linalg_eig has no ONNX translation."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(784, 10)

    def forward(self, images):
        patch = images[:, 0, :4, :4]
        return self.head(images.flatten(1)) + torch.linalg.eigvals(patch).real.sum(dim=1, keepdim=True)
