"""The two MNIST networks of the paper's Table 1."""

import torch
from torch import nn


class LeNet300(nn.Module):
    """LeNet-300-100: 784-300-100-10 fully connected, ReLU; 266,610 parameters."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(images.flatten(1)))
        return self.fc3(torch.relu(self.fc2(hidden)))


class LeNet5(nn.Module):
    """LeNet-5, Caffe variant: conv 20@5x5, pool, conv 50@5x5, pool, fc 800-500, fc 500-10; 431,080 parameters.

    Caffe's prototxt has no non-linearity after the convolutions; a ReLU after each pooling costs no parameters
    and trains faster, so it is added here.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.relu(nn.functional.max_pool2d(self.conv1(images), 2))
        features = torch.relu(nn.functional.max_pool2d(self.conv2(features), 2))
        return self.fc2(torch.relu(self.fc1(features.flatten(1))))
