"""Parameter counts of the paper's networks, and what the registry says about their prunable layers."""

import pytest

from pruning_cli.models import get_model_spec


@pytest.mark.parametrize(("name", "expected"), [("lenet300", 266_610), ("lenet5", 431_080)])
def test_parameter_counts_match_the_paper(name, expected):
    model = get_model_spec(name).build(10)
    assert sum(parameter.numel() for parameter in model.parameters()) == expected


def test_lenet5_layers_and_their_output_positions():
    spec = get_model_spec("lenet5")
    model = spec.build(10)
    assert list(spec.prunable(model)) == ["conv1", "conv2", "fc1", "fc2"]
    assert spec.output_positions(model) == {"conv1": 24 * 24, "conv2": 8 * 8, "fc1": 1, "fc2": 1}
    weights = {name: layer.weight.numel() for name, layer in spec.prunable(model).items()}
    assert weights == {"conv1": 500, "conv2": 25_000, "fc1": 400_000, "fc2": 5_000}
