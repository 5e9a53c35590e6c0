"""The pruning math on hand-made tensors: thresholds, which weights go, schedules, and masks through SGD."""

import math

import pytest
import torch
from torch import nn

from pruning_cli.config.schema import Freeze, PhaseConfig, Regularization
from pruning_cli.data.tensors import TensorSplit
from pruning_cli.pruning.dropout_rate import rescaled_dropout
from pruning_cli.pruning.masks import (
    count_nonzero,
    scheduled_fraction,
    strongest_per_output,
    threshold_mask,
    top_fraction_mask,
)
from pruning_cli.pruning.schedule import Turn, pruning_schedule
from pruning_cli.pruning.stats import layer_stats
from pruning_cli.pruning.step import LayerStep, prune_step, surviving_std
from pruning_cli.pruning.targets import LayerTarget, resolve_targets
from pruning_cli.training.loop import MaskedWeights, PhaseExecution, train_phase


def test_threshold_is_sensitivity_times_the_std_of_the_survivors():
    weight = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 9.0])
    alive = torch.tensor([True, True, True, True, True, False])  # 9.0 was pruned: not in the std
    assert surviving_std(weight, alive) == pytest.approx(math.sqrt(2.5))  # unbiased std of [-2, -1, 0, 1, 2]
    masks, records = prune_step({"fc": weight}, {"fc": alive}, {"fc": LayerStep(LayerTarget(sensitivity=0.5))})
    assert records["fc"].std == pytest.approx(math.sqrt(2.5))
    assert records["fc"].threshold == pytest.approx(0.5 * math.sqrt(2.5)) and records["fc"].sensitivity == 0.5
    assert masks["fc"].tolist() == [True, True, False, True, True, False] and records["fc"].kept == 4


def test_the_dense_std_replaces_the_survivors_when_given():
    weight, alive = torch.tensor([0.1, -0.3, 0.5, -0.7]), torch.ones(4, dtype=torch.bool)
    masks, records = prune_step(
        {"fc": weight}, {"fc": alive}, {"fc": LayerStep(LayerTarget(sensitivity=2.0))}, {"fc": 0.2}
    )
    assert records["fc"].threshold == pytest.approx(0.4) and records["fc"].std == 0.2
    assert masks["fc"].tolist() == [False, False, True, True]


def test_a_kept_target_walks_its_schedule_and_layers_outside_the_plan_keep_their_masks():
    weights = {"fc1": torch.arange(1.0, 101.0), "fc2": torch.arange(1.0, 11.0)}
    masks = {name: torch.ones_like(weight, dtype=torch.bool) for name, weight in weights.items()}
    plan = {"fc1": LayerStep(LayerTarget(kept=0.25), Turn(1, 2))}  # half-way: keep 0.25 ** (1/2) = 50%
    new_masks, records = prune_step(weights, masks, plan)
    assert records["fc1"].kept == 50 and new_masks["fc1"][50:].all() and not new_masks["fc1"][:50].any()
    assert records["fc1"].threshold == 51.0 and set(records) == {"fc1"}
    assert new_masks["fc2"] is masks["fc2"]


def test_a_step_that_would_empty_a_layer_is_capped_to_one_weight_per_output():
    weight = torch.tensor([[0.1, -0.9, 0.5], [0.4, 0.2, -0.3]])
    alive = torch.ones_like(weight, dtype=torch.bool)
    masks, records = prune_step({"fc": weight}, {"fc": alive}, {"fc": LayerStep(LayerTarget(sensitivity=50.0))})
    assert records["fc"].capped and records["fc"].kept == 2
    assert masks["fc"].tolist() == [[False, True, False], [True, False, False]]


def test_threshold_mask_removes_exactly_the_weights_below_the_threshold():
    weight = torch.tensor([[0.5, -0.05, 0.2], [-0.3, 0.1, -0.09]])
    mask = threshold_mask(weight, 0.1)
    assert mask.tolist() == [[True, False, True], [True, True, False]]


def test_threshold_mask_never_revives_a_pruned_weight():
    weight = torch.tensor([0.9, 0.8, 0.7])
    previous = torch.tensor([True, False, True])
    assert threshold_mask(weight, 0.0, previous).tolist() == [True, False, True]


def test_top_fraction_keeps_the_largest_magnitudes_and_reports_their_threshold():
    weight = torch.tensor([0.1, -0.9, 0.3, -0.2, 0.05, 0.6, -0.4, 0.7])
    mask, threshold = top_fraction_mask(weight, 0.5)
    assert mask.tolist() == [False, True, False, False, False, True, True, True]
    assert threshold == pytest.approx(0.4)


def test_top_fraction_counts_from_all_weights_and_only_picks_survivors():
    weight = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    previous = torch.tensor([False, True, True, True, True, True])  # the largest one is already pruned
    mask, _ = top_fraction_mask(weight, 0.5, previous)
    assert mask.tolist() == [False, True, True, True, False, False]


def test_schedule_walks_geometrically_to_the_target():
    fractions = [scheduled_fraction(0.08, i, 4) for i in range(1, 5)]
    assert fractions[-1] == pytest.approx(0.08)
    ratios = [b / a for a, b in zip(fractions, fractions[1:], strict=False)]
    assert ratios == pytest.approx([0.08**0.25] * 3)


def test_strongest_per_output_keeps_one_surviving_weight_per_unit():
    weight = torch.tensor([[0.1, -0.9, 0.5], [0.4, 0.2, -0.3], [0.8, 0.1, 0.1]])
    mask = torch.tensor([[True, False, True], [True, True, True], [False, False, False]])
    capped = strongest_per_output(weight, mask)
    # Row 0: -0.9 is already pruned, so 0.5 stays; row 2 had no survivors and stays empty.
    assert capped.tolist() == [[False, False, True], [True, False, False], [False, False, False]]
    conv = torch.randn(4, 2, 3, 3)
    assert strongest_per_output(conv, torch.ones_like(conv, dtype=torch.bool)).flatten(1).sum(1).tolist() == [1] * 4


def test_resolve_targets_precedence_kept_over_layer_over_global():
    targets = resolve_targets(["fc1", "fc2", "fc3"], 1.0, {"fc2": 0.5, "fc3": 2.0}, {"fc3": 0.3})
    assert targets == {
        "fc1": LayerTarget(sensitivity=1.0),
        "fc2": LayerTarget(sensitivity=0.5),
        "fc3": LayerTarget(kept=0.3),
    }
    assert resolve_targets(["fc1", "fc2"], None, {"fc2": 0.7}, {}) == {"fc2": LayerTarget(sensitivity=0.7)}


@pytest.mark.parametrize(
    ("sensitivity", "layer_sensitivity", "kept", "message"),
    [
        (1.0, {"conv9": 1.0}, {}, "layer(s) conv9 that this model does not have; its prunable layers are: fc1, fc2"),
        (-0.5, {}, {}, "sensitivity of layer fc1 is -0.5; it must be >= 0"),
        (1.0, {}, {"fc2": 1.5}, "kept fraction of layer fc2 is 1.5; it must be in (0, 1]"),
        (1.0, {}, {"fc2": 0.0}, "kept fraction of layer fc2 is 0.0; it must be in (0, 1]"),
    ],
)
def test_resolve_targets_refuses_bad_settings(sensitivity, layer_sensitivity, kept, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_targets(["fc1", "fc2"], sensitivity, layer_sensitivity, kept)


def _train_pruned_layer(mask_it: bool) -> tuple[nn.Linear, torch.Tensor, torch.optim.Optimizer | None]:
    torch.manual_seed(0)
    layer = nn.Linear(20, 5)
    mask = threshold_mask(layer.weight, layer.weight.std().item())
    with torch.no_grad():
        layer.weight.mul_(mask)
    masked = MaskedWeights([layer.weight], [mask]) if mask_it else MaskedWeights([], [])
    data = TensorSplit(torch.randn(256, 20), torch.randint(5, (256,)))
    phase = PhaseConfig(epochs=25, batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-2)
    train_phase(layer, data, phase, masked, PhaseExecution(torch.Generator().manual_seed(0), "test"))
    return layer, mask


def test_masks_keep_pruned_weights_exactly_zero_through_momentum_and_weight_decay():
    layer, mask = _train_pruned_layer(mask_it=True)  # 25 epochs x 16 steps of SGD, momentum 0.9, decay 1e-2
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.all(layer.weight[~mask] == 0)
    assert torch.all(layer.weight[mask] != 0)


def test_without_masks_sgd_revives_pruned_weights():
    layer, mask = _train_pruned_layer(mask_it=False)
    assert torch.count_nonzero(layer.weight[~mask]) == int((~mask).sum())


def test_l1_regularisation_also_keeps_masks():
    torch.manual_seed(0)
    layer = nn.Linear(10, 3)
    mask = torch.rand_like(layer.weight) > 0.5
    with torch.no_grad():
        layer.weight.mul_(mask)
    data = TensorSplit(torch.randn(64, 10), torch.randint(3, (64,)))
    phase = PhaseConfig(epochs=5, batch_size=8, lr=0.1, weight_decay=1e-2, regularization=Regularization.l1)
    train_phase(layer, data, phase, MaskedWeights([layer.weight], [mask]), PhaseExecution(torch.Generator(), "test"))
    assert torch.all(layer.weight[~mask] == 0)


def test_dropout_rescaling_follows_the_paper():
    assert rescaled_dropout(0.5, 10_000, 900) == pytest.approx(0.15)  # AlexNet fc6 at 9% kept
    assert rescaled_dropout(0.5, 100, 100) == 0.5


def test_layer_stats_count_dead_inputs_and_outputs_of_an_fc_layer():
    weight = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    stats = layer_stats(weight, positions=1)
    # Input 1 feeds nothing; output 1 receives nothing (paper section 3.5: both are dead).
    assert (stats["dead_inputs"], stats["dead_outputs"]) == (1, 1)


def test_layer_stats_count_weights_and_flops_of_a_conv():
    weight = torch.zeros(20, 1, 5, 5)
    weight[:, :, 2, 2] = 1.0  # 20 of 500 weights survive
    stats = layer_stats(weight, positions=24 * 24)
    assert stats == {
        "weights_total": 500,
        "weights_nonzero": 20,
        "kept": 0.04,
        "flops_total": 2 * 500 * 576,
        "flops_nonzero": 2 * 20 * 576,
        "dead_inputs": 0,
        "dead_outputs": 0,
    }
    assert count_nonzero([weight, torch.tensor([0.0, 3.0])]) == 21


LENET5_KINDS = {"conv1": "conv", "conv2": "conv", "fc1": "fc", "fc2": "fc"}


def test_every_iteration_prunes_every_layer_by_default():
    plan = pruning_schedule(LENET5_KINDS, 3, alternate=False, freeze=Freeze.conv)
    assert [iteration.pruned["fc1"] for iteration in plan] == [Turn(1, 3), Turn(2, 3), Turn(3, 3)]
    assert all(set(iteration.pruned) == set(LENET5_KINDS) and iteration.freeze is Freeze.conv for iteration in plan)


def test_alternation_prunes_fc_with_conv_frozen_then_the_reverse():
    plan = pruning_schedule(LENET5_KINDS, 3, alternate=True, freeze=Freeze.none)
    assert [(sorted(iteration.pruned), iteration.freeze) for iteration in plan] == [
        (["fc1", "fc2"], Freeze.conv),
        (["conv1", "conv2"], Freeze.fc),
        (["fc1", "fc2"], Freeze.conv),
    ]
    # each kind walks its own schedule: fc reaches its final fraction at its 2nd turn, conv at its only one
    assert [iteration.pruned.get("fc2") for iteration in plan] == [Turn(1, 2), None, Turn(2, 2)]
    assert plan[1].pruned["conv1"] == Turn(1, 1)


@pytest.mark.parametrize(("kinds", "iterations", "freeze", "message"), [
    ({"fc1": "fc", "fc2": "fc"}, 4, Freeze.none, "needs conv and fc layers"),
    (LENET5_KINDS, 1, Freeze.none, "needs pruning.iterations >= 2"),
    (LENET5_KINDS, 4, Freeze.fc, "leave retrain.freeze=none, not fc"),
])  # fmt: skip
def test_alternation_refuses_what_it_cannot_do(kinds, iterations, freeze, message):
    with pytest.raises(ValueError, match=message):
        pruning_schedule(kinds, iterations, alternate=True, freeze=freeze)


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_a_kept_fraction_breaks_ties_by_index_so_the_count_and_the_weights_are_exact(device):
    """1,000 weights of equal magnitude but three larger ones, two pruned: keeping 10% keeps the three, then the
    97 lowest surviving indices (an unsorted top-k picks any of the ties, and not the same ones on every device)."""
    weight = torch.full((1000,), 0.25)
    weight[1::2] *= -1
    weight[[500, 700, 900]] = 3.0
    mask = torch.ones(1000, dtype=torch.bool)
    mask[[0, 5]] = False
    kept, threshold = top_fraction_mask(weight.to(device), 0.1, mask.to(device))
    expected = [index for index in range(1000) if index not in (0, 5)][:97] + [500, 700, 900]
    assert kept.nonzero().flatten().tolist() == expected and threshold == 0.25
    new_masks, records = prune_step(
        {"w": weight.view(20, 50)}, {"w": mask.view(20, 50)}, {"w": LayerStep(LayerTarget(kept=0.1))}
    )
    assert new_masks["w"].flatten().nonzero().flatten().tolist() == expected and records["w"].kept == 100


def test_the_strongest_weight_of_a_unit_with_tied_magnitudes_is_its_first():
    weight = torch.tensor([[0.5, -0.5, 0.5], [0.2, -0.7, 0.7]])
    capped = strongest_per_output(weight, torch.tensor([[False, True, True], [True, True, True]]))
    assert capped.tolist() == [[False, True, False], [False, True, False]]
