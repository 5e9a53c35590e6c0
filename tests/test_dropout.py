"""Dropout rates as tensors: a compiled retraining step does not recompile when the paper's rescaling changes the
rate, and the layer still drops as nn.Dropout does."""

import pytest
import torch
from torch import nn

from pruning_cli.models import get_model_spec
from pruning_cli.training.rate_dropout import RateDropout, use_rate_dropouts


def _model(dropout: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), dropout, nn.Linear(32, 4))


def _unique_graphs(model: nn.Sequential, rates: list[float]) -> int:
    """Compile `model`, train a step at each rate of its dropout, and count the graphs compiled."""
    from torch._dynamo.utils import counters  # imported here: 1.5 s of every test process's start otherwise

    torch._dynamo.reset()
    counters.clear()
    compiled, inputs = torch.compile(model), torch.randn(8, 16)
    for rate in rates:
        model[2].p = rate
        compiled(inputs).sum().backward()
    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_a_compiled_step_compiles_once_for_every_rate_where_nn_dropout_compiles_once_per_rate():
    rates = [0.5, 0.35, 0.2]
    assert _unique_graphs(_model(nn.Dropout(0.5)), rates) == 3  # the rate is a constant of the graph
    assert _unique_graphs(_model(RateDropout(0.5)), rates) == 1


def test_it_drops_at_its_current_rate_and_scales_the_survivors():
    dropout = RateDropout(0.5)
    dropout.p = 0.2
    outputs = dropout(torch.ones(100_000))
    assert dropout.p == pytest.approx(0.2) and set(outputs.unique().tolist()) == {0.0, 1.25}
    assert (outputs == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert torch.equal(dropout.eval()(torch.ones(10)), torch.ones(10))  # evaluation passes inputs through


def test_swapped_dropouts_keep_alexnets_state_dict_and_rates():
    spec = get_model_spec("alexnet")
    model = spec.build(10)
    keys = list(model.state_dict())
    use_rate_dropouts(model, list(spec.dropouts.values()))
    swapped = [model.get_submodule(path) for path in spec.dropouts.values()]
    assert all(isinstance(module, RateDropout) and module.rate.item() == 0.5 for module in swapped)
    assert list(model.state_dict()) == keys  # model.pt still loads into torchvision's AlexNet
