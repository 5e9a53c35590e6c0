"""How many of each layer's input activations are non-zero, measured with forward pre-hooks during evaluation.

The paper's per-layer tables give the % of non-zero activations (after ReLU) because the FLOPs a sparse
kernel really saves are about (weights kept) x (non-zero inputs). The input of layer l+1 is the output of layer l
after its nonlinearity, so one pre-hook per prunable layer gives every figure the tables need.
"""

from collections.abc import Mapping
from types import TracebackType

import torch
from torch import Tensor, nn


class InputDensity:
    """Context manager: while active, counts non-zero entries of each named module's input (on its device)."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = modules
        self.nonzero: dict[str, Tensor] = {}
        self.total: dict[str, int] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def count(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            activations = inputs[0].detach()
            self.nonzero[name] = self.nonzero.get(name, 0) + torch.count_nonzero(activations)  # no host sync
            self.total[name] = self.total.get(name, 0) + activations.numel()

        return count

    def __enter__(self) -> "InputDensity":
        self._hooks = [module.register_forward_pre_hook(self._hook(name)) for name, module in self.modules.items()]
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        for hook in self._hooks:
            hook.remove()

    def fractions(self) -> dict[str, float]:
        """Non-zero fraction of each module's inputs over everything it saw (NaN for a module never called)."""
        return {
            name: int(self.nonzero[name]) / self.total[name] if self.total.get(name) else float("nan")
            for name in self.modules
        }
