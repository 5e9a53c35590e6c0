"""Holding conv or fc layers fixed during a retraining phase (the paper retrains one kind while the other waits)."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn

from pruning_cli.config.schema import Freeze

KINDS = {Freeze.conv: nn.Conv2d, Freeze.fc: nn.Linear}


@contextmanager
def frozen(layers: Iterable[nn.Module], freeze: Freeze) -> Iterator[list[nn.Module]]:
    """Within the block, the layers of the frozen kind have `requires_grad=False` (weights and biases).

    The training loop builds its optimizer from the parameters that require a gradient, so frozen ones get no
    gradient, no momentum and no weight decay: they stay bit-identical. Autograd also skips their weight
    gradients, which makes retraining fc with conv frozen much cheaper.
    """
    held = [layer for layer in layers if freeze in KINDS and isinstance(layer, KINDS[freeze])]
    parameters = [parameter for layer in held for parameter in layer.parameters() if parameter.requires_grad]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield held
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)
