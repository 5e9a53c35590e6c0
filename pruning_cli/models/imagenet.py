"""AlexNet and VGG-16 as torchvision builds them, with the paper's layer names mapped onto their modules.

The model is torchvision's own module, so `model.pt` keeps torchvision's state_dict keys and loads into
`torchvision.models.alexnet(num_classes=...)` / `vgg16(...)` unchanged.
"""

from collections.abc import Callable
from functools import partial

from torch import nn

VGG16_CONVS = ("1_1", "1_2", "2_1", "2_2", "3_1", "3_2", "3_3", "4_1", "4_2", "4_3", "5_1", "5_2", "5_3")
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

ALEXNET_LAYERS = {
    **{f"conv{i}": f"features.{index}" for i, index in enumerate((0, 3, 6, 8, 10), start=1)},
    "fc6": "classifier.1",
    "fc7": "classifier.4",
    "fc8": "classifier.6",
}
# The dropout in front of each fc layer (torchvision: Dropout -> Linear -> ReLU); fc8 has none in AlexNet.
ALEXNET_DROPOUTS = {"fc6": "classifier.0", "fc7": "classifier.3"}

VGG16_LAYERS = {
    **{f"conv{name}": f"features.{index}" for name, index in zip(VGG16_CONVS, VGG16_CONV_INDICES, strict=True)},
    "fc6": "classifier.0",
    "fc7": "classifier.3",
    "fc8": "classifier.6",
}
# VGG-16: Linear -> ReLU -> Dropout, so the dropout feeding fc7 / fc8 follows fc6 / fc7.
VGG16_DROPOUTS = {"fc7": "classifier.2", "fc8": "classifier.5"}


def torchvision_builder(name: str) -> Callable[[int], nn.Module]:
    """`build(num_classes)` for a torchvision classification model, randomly initialised."""
    return partial(_build, name)


def _build(name: str, num_classes: int) -> nn.Module:
    import torchvision  # imported where it is used: it takes a second, which LeNet runs need not pay

    # Inception's auxiliary heads run only in training, and change what the model returns there: left out.
    auxiliary = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **auxiliary)
