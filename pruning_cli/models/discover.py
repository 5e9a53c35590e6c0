"""Any torchvision classifier: its prunable layers found by walking the module, not listed by hand.

Every Conv2d (grouped and depthwise ones included) and every Linear is a layer of connections with magnitudes, so
the paper's method applies to each; layers are named by their module paths (`layer1.0.conv1`, `fc`), and norm
layers and biases are never pruned. A dropout feeds a prunable Linear when it comes before it in the same
nn.Sequential with nothing that has weights in between (torchvision's classifier heads), and is then rescaled with
that layer's sparsity as in the paper.
"""

from functools import cache

import torch
from torch import nn

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable_paths(model: nn.Module) -> dict[str, str]:
    """Every Conv2d and Linear of `model`, in registration order (the forward order of torchvision's models):
    name -> module path, the two being the same."""
    return {path: path for path, module in model.named_modules() if isinstance(module, PRUNABLE)}


def feeding_dropouts(model: nn.Module, layers: dict[str, str]) -> dict[str, str]:
    """Prunable Linear layer -> the Dropout in front of it in the same nn.Sequential (weightless modules between)."""
    feeding: dict[str, str] = {}
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        pending = None
        for child_name, child in container.named_children():
            path = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, nn.Dropout):
                pending = path
            elif isinstance(child, nn.Linear) and path in layers.values() and pending:
                feeding[path], pending = pending, None
            elif any(True for _ in child.parameters()):
                pending = None
    return feeding


def torchvision_classifiers() -> list[str]:
    """The classification models torchvision can build by name."""
    import torchvision  # imported here: see models/imagenet.py

    return sorted(torchvision.models.list_models(module=torchvision.models))


@cache
def discovered_layers(arch: str) -> tuple[dict[str, str], dict[str, str]]:
    """The prunable layers and feeding dropouts of torchvision's `arch` (built on the meta device: no memory)."""
    from pruning_cli.models.imagenet import torchvision_builder

    with torch.device("meta"):
        model = torchvision_builder(arch)(10)
    layers = prunable_paths(model)
    return layers, feeding_dropouts(model, layers)
