"""Dropout whose rate is a tensor, for compiled retraining.

The paper rescales the dropout in front of each pruned layer at every iteration (D_r = D_o sqrt(C_r / C_o)). On
`nn.Dropout` the rate is a Python float, which `torch.compile` bakes into the graph: every new rate recompiled the
training step (AlexNet: about 12 s per iteration on a GPU). Here the rate is a 0-dim buffer that the graph reads
at run time, so one compilation serves every rate.
"""

import torch
from torch import Tensor, nn


class RateDropout(nn.Module):
    """Inverted dropout like `nn.Dropout(p)` (zero each input with probability p, scale the rest by 1 / (1 - p)),
    with `p` held in a non-persistent buffer: not in the state_dict, so the model's keys stay torchvision's."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(float(p)), persistent=False)

    @property
    def p(self) -> float:
        return self.rate.item()

    @p.setter
    def p(self, value: float) -> None:
        self.rate.fill_(value)

    def forward(self, inputs: Tensor) -> Tensor:
        if not self.training:
            return inputs
        keep = 1 - self.rate
        return inputs * torch.empty_like(inputs).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p:g} (a tensor)"


def use_rate_dropouts(model: nn.Module, paths: list[str]) -> None:
    """Replace the `nn.Dropout` modules at `paths` (module paths) of `model` by RateDropouts of the same rate."""
    for path in paths:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, name, RateDropout(model.get_submodule(path).p))
