"""Building a registered model, with torchvision's pretrained weights when the config asks for them."""

import torch
from torch import nn

from pruning_cli.errors import UserError
from pruning_cli.models.registry import ModelSpec

IMAGENET_CLASSES = 1000


def build_model(spec: ModelSpec, name: str, num_classes: int, weights: str | None) -> nn.Module:
    """`spec.build(num_classes)`, or torchvision's model with `weights` loaded (from the torch hub cache).

    Pretrained weights are what the paper starts from for AlexNet and VGG-16 (Caffe model zoo); loading them
    here lets `train.epochs=0` skip the weeks of dense ImageNet training.
    """
    if weights is None:
        return spec.build(num_classes)
    import torchvision  # imported here: see models/imagenet.py

    if spec.torchvision_name is None:
        raise UserError(
            f"model.weights={weights} needs a torchvision model (alexnet, vgg16, or model=torchvision); "
            f"model={name} is not one"
        )
    if num_classes != IMAGENET_CLASSES:
        raise UserError(
            f"model.weights={weights} are for {IMAGENET_CLASSES} ImageNet classes but the data set has {num_classes}; "
            "use a 1000-class data set or model.weights=null"
        )
    try:
        enum = torchvision.models.get_model_weights(spec.torchvision_name)
        chosen = enum.verify(weights)
    except (KeyError, ValueError) as error:
        names = ", ".join(member.name for member in enum)
        raise UserError(f"model.weights={weights} is not a weight set of {name}; choose one of {names}") from error
    try:
        return torchvision.models.get_model(spec.torchvision_name, weights=chosen, num_classes=num_classes)
    except Exception as error:  # no network, a partial file, a proxy: the errors of urllib and torch.load vary
        raise UserError(
            f"cannot load model.weights={weights} for {name} ({type(error).__name__}): without a network the file "
            f"{chosen.url.rsplit('/', 1)[-1]} must already be in the torch hub cache ({torch_hub_checkpoints()}); "
            "or load a dense model with train.checkpoint=... and model.weights=null"
        ) from error


def torch_hub_checkpoints() -> str:
    """Where torchvision looks for (and downloads) pretrained weight files: $TORCH_HOME/hub/checkpoints."""
    return f"{torch.hub.get_dir()}/checkpoints"
