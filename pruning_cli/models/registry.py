"""Which models exist, how to build them, and which of their modules the pruning strategies may touch."""

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial

import torch
from torch import Tensor, nn

from pruning_cli.errors import UserError
from pruning_cli.models.discover import discovered_layers, feeding_dropouts, prunable_paths, torchvision_classifiers
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
    # Whether each prunable layer feeds the next through ReLU, pooling, dropout and flatten only (the four paper
    # networks): then prune-export can remove dead hidden units. False for a discovered model.
    chained: bool = True

    def without(self, excluded: Collection[str]) -> "ModelSpec":
        """This spec with the layers `excluded` left dense (ValueError naming an unknown one, and the choices)."""
        unknown = [name for name in excluded if name not in self.layers]
        if unknown:
            raise ValueError(
                f"pruning.exclude names {', '.join(unknown)}, which this model does not have; its prunable layers: "
                f"{', '.join(self.layers)}"
            )
        layers = {name: path for name, path in self.layers.items() if name not in excluded}
        if not layers:
            raise ValueError("pruning.exclude leaves no layer to prune; exclude fewer")
        dropouts = {name: path for name, path in self.dropouts.items() if name in layers}
        # a dense layer between two pruned ones: their units no longer feed each other directly
        return replace(self, layers=layers, dropouts=dropouts, chained=self.chained and not excluded)

    def prunable(self, model: nn.Module) -> dict[str, nn.Module]:
        """The prunable modules of a built model, by paper name, in forward order."""
        return {name: model.get_submodule(path) for name, path in self.layers.items()}

    def layer_kinds(self) -> dict[str, str]:
        """`conv` or `fc` per prunable layer, in forward order (from a model built on the meta device: no memory)."""
        modules = self.prunable(_built_on_meta(self.build, 10))
        return {name: "conv" if isinstance(module, nn.Conv2d) else "fc" for name, module in modules.items()}

    def layer_sizes(self, num_classes: int = 10) -> dict[str, int]:
        """Weights per prunable layer, in forward order (built on the meta device: no memory)."""
        return {name: math.prod(shape) for name, shape in self.layer_shapes(num_classes).items()}

    def layer_shapes(self, num_classes: int = 10) -> dict[str, tuple[int, ...]]:
        """Weight shape per prunable layer, in forward order (built on the meta device: no memory)."""
        modules = self.prunable(_built_on_meta(self.build, num_classes))
        return {name: tuple(module.weight.shape) for name, module in modules.items()}

    def output_positions(self, model: nn.Module) -> dict[str, int]:
        """Output positions per sample of each prunable layer: H x W for a conv, 1 for a linear layer on a vector,
        the tokens of one on a sequence. A one-line error naming the layers a forward pass never calls as modules."""
        positions: dict[str, int] = {}

        def count(name: str, module: nn.Module, output: Tensor) -> None:
            linear = isinstance(module, nn.Linear)
            positions[name] = output[0].numel() // module.out_features if linear else output[0, 0].numel()

        hooks = [
            module.register_forward_hook(lambda module, _i, output, name=name: count(name, module, output))
            for name, module in self.prunable(model).items()
        ]
        device = next(model.parameters()).device
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, *self.input_shape, device=device))
        finally:
            for hook in hooks:
                hook.remove()
        unreached = [name for name in self.layers if name not in positions]
        if unreached:
            raise UserError(
                f"a forward pass never calls {', '.join(unreached[:5])}{' ...' if len(unreached) > 5 else ''} as a "
                "module (used functionally, or an auxiliary head): leave it dense with pruning.exclude=[...]"
            )
        return positions


MODELS: dict[str, ModelSpec] = {
    "lenet300": ModelSpec(LeNet300, {"fc1": "fc1", "fc2": "fc2", "fc3": "fc3"}, (1, 28, 28)),
    "lenet5": ModelSpec(LeNet5, {"conv1": "conv1", "conv2": "conv2", "fc1": "fc1", "fc2": "fc2"}, (1, 28, 28)),
    "alexnet": ModelSpec(torchvision_builder("alexnet"), ALEXNET_LAYERS, (3, 224, 224), ALEXNET_DROPOUTS, "alexnet"),
    "vgg16": ModelSpec(torchvision_builder("vgg16"), VGG16_LAYERS, (3, 224, 224), VGG16_DROPOUTS, "vgg16"),
}


# `model=torchvision model.arch=NAME`: any torchvision classifier, its layers discovered (models/discover.py).
TORCHVISION = "torchvision"
IMAGENET_SHAPE = (3, 224, 224)


def model_key(name: str, arch: str | None = None, target: str | None = None) -> str:
    """What a run's model is called in its CSVs, reports and exported files: the registered name, the torchvision
    architecture of `model=torchvision`, or the import path of `model=custom`."""
    if name == TORCHVISION and arch:
        return arch
    return target if name == CUSTOM and target else name


@lru_cache(maxsize=8)
def _built_on_meta(build: Callable[[int], nn.Module], num_classes: int) -> nn.Module:
    """The model `build` makes, on the meta device (no memory), built once: a run reads its layers' kinds and
    shapes four times, and a torchvision model takes 70 ms to build even there."""
    with torch.device("meta"):
        return build(num_classes)


CUSTOM = "custom"


def custom_spec(target: str, args: Mapping | None, input_shape: tuple[int, int, int]) -> ModelSpec:
    """Your own module (`model=custom`): `target(**args)` built by hydra.utils.instantiate, its layers discovered
    as a torchvision classifier's. ValueError when it cannot be built or has no layer to prune."""
    if args is not None and not isinstance(args, Mapping):
        raise ValueError(f"model.args is {args!r}; give keyword arguments, e.g. model.args={{hidden:64}}")
    build = partial(_instantiate, target, dict(args or {}))
    try:
        with torch.device("meta"):  # no memory for the weights
            model = build(0)
    except ValueError:
        model = build(0)  # a module that reads its own values while it is built (.item()) cannot be built on meta
    layers = prunable_paths(model)
    if not layers:
        raise ValueError(f"model._target_={target} has no Conv2d or Linear layer: nothing to prune")
    return ModelSpec(build, layers, input_shape, feeding_dropouts(model, layers), None, False)


def _instantiate(target: str, args: dict, _num_classes: int) -> nn.Module:
    """`target(**args)`; its output size is the user's to match with the data set (checked at the run's start)."""
    from hydra.utils import instantiate

    try:
        model = instantiate({"_target_": target, **args}, _convert_="all")
    except Exception as error:  # an import path that does not import, arguments it does not take
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"model._target_={target} cannot be built: {reason}") from error
    if not isinstance(model, nn.Module):
        raise ValueError(f"model._target_={target} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def get_model_spec(name: str, input_shape: tuple[int, int, int] | None = None) -> ModelSpec:
    """The spec registered under `name`, or the discovered spec of torchvision's classifier `name` (its input
    shape `input_shape`, 3 x 224 x 224 by default); KeyError for neither."""
    if name in MODELS:
        return MODELS[name]
    if name not in torchvision_classifiers():
        raise KeyError(name)
    layers, dropouts = discovered_layers(name)
    return ModelSpec(torchvision_builder(name), layers, input_shape or IMAGENET_SHAPE, dropouts, name, False)
