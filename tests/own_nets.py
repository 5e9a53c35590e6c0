"""Small modules of a user's own, for `model=custom model._target_=own_nets.<Name>` in the tests."""

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
