"""Which models exist, how to build them, and which of their modules the pruning strategies may touch."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from pruning_cli.models.imagenet import (
    ALEXNET_DROPOUTS,
    ALEXNET_LAYERS,
    VGG16_DROPOUTS,
    VGG16_LAYERS,
    torchvision_builder,
)
from pruning_cli.models.lenet import LeNet5, LeNet300


@dataclass(frozen=True)
class ModelSpec:
    """A model the runner knows: its builder, its prunable layers under the paper's names, its input shape.

    `layers` maps the paper's layer name (conv1, fc6, ...) to the module path in the model, so CSVs speak the
    paper's language while `model.pt` keeps the model's own state_dict keys. `dropouts` maps a prunable layer
    to the dropout module that feeds it, whose rate is rescaled when that layer is pruned.
    """

    build: Callable[[int], nn.Module]
    layers: Mapping[str, str]
    input_shape: tuple[int, int, int]
    dropouts: Mapping[str, str] = field(default_factory=dict)
    # The name torchvision.models.get_model knows it by (pretrained weights come from there); None for our own.
    torchvision_name: str | None = None

    def prunable(self, model: nn.Module) -> dict[str, nn.Module]:
        """The prunable modules of a built model, by paper name, in forward order."""
        return {name: model.get_submodule(path) for name, path in self.layers.items()}

    def layer_kinds(self) -> dict[str, str]:
        """`conv` or `fc` per prunable layer, in forward order (from a model built on the meta device: no memory)."""
        with torch.device("meta"):
            modules = self.prunable(self.build(10))
        return {name: "conv" if isinstance(module, nn.Conv2d) else "fc" for name, module in modules.items()}

    def layer_sizes(self, num_classes: int = 10) -> dict[str, int]:
        """Weights per prunable layer, in forward order (built on the meta device: no memory)."""
        with torch.device("meta"):
            modules = self.prunable(self.build(num_classes))
        return {name: module.weight.numel() for name, module in modules.items()}

    def output_positions(self, model: nn.Module) -> dict[str, int]:
        """Output positions per sample of each prunable layer (H x W for a conv, 1 for a linear layer)."""
        positions: dict[str, int] = {}
        hooks = [
            module.register_forward_hook(
                lambda _m, _i, output, name=name: positions.__setitem__(name, output[0, 0].numel())
            )
            for name, module in self.prunable(model).items()
        ]
        device = next(model.parameters()).device
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, *self.input_shape, device=device))
        finally:
            for hook in hooks:
                hook.remove()
        return positions


MODELS: dict[str, ModelSpec] = {
    "lenet300": ModelSpec(LeNet300, {"fc1": "fc1", "fc2": "fc2", "fc3": "fc3"}, (1, 28, 28)),
    "lenet5": ModelSpec(LeNet5, {"conv1": "conv1", "conv2": "conv2", "fc1": "fc1", "fc2": "fc2"}, (1, 28, 28)),
    "alexnet": ModelSpec(torchvision_builder("alexnet"), ALEXNET_LAYERS, (3, 224, 224), ALEXNET_DROPOUTS, "alexnet"),
    "vgg16": ModelSpec(torchvision_builder("vgg16"), VGG16_LAYERS, (3, 224, 224), VGG16_DROPOUTS, "vgg16"),
}


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered under `name`."""
    return MODELS[name]
