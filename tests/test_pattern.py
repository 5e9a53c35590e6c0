"""2:4 semi-structured sparsity: at most 2 of every 4 weights along a layer's input, on the layers the kernels take."""

import pandas as pd
import pytest
import torch
from runs import compose_config, run_in_process

from pruning_cli.errors import UserError
from pruning_cli.pruning.nm_sparsity import fits_semi_structured, n_of_m_mask, parse_pattern
from pruning_cli.run.plan import plan_run


def test_each_group_of_four_keeps_its_two_largest_survivors():
    weight = torch.tensor([[4.0, -1.0, 3.0, 2.0, 0.5, -0.1, 0.2, -0.3]])
    full = torch.ones_like(weight, dtype=torch.bool)
    assert n_of_m_mask(weight, full, 2, 4).tolist() == [[True, False, True, False, True, False, False, True]]
    thresholded = weight.abs() > 1.5  # the layer's own rule removed -1, 0.5, -0.1, 0.2, -0.3
    assert n_of_m_mask(weight, thresholded, 2, 4).tolist() == [[True, False, True, False, False, False, False, False]]
    ties = torch.ones(1, 4)
    assert n_of_m_mask(ties, torch.ones_like(ties, dtype=torch.bool), 2, 4).tolist() == [[True, True, False, False]]


def test_no_group_keeps_more_than_two_and_nothing_pruned_comes_back():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 128, generator=generator)
    mask = torch.rand(64, 128, generator=generator) > 0.3
    patterned = n_of_m_mask(weight, mask, 2, 4)
    groups, survivors = patterned.reshape(64, 32, 4).sum(dim=2), mask.reshape(64, 32, 4).sum(dim=2)
    assert (groups <= 2).all() and not (patterned & ~mask).any()
    assert torch.equal(groups, survivors.clamp(max=2))  # every group keeps min(2, its survivors)


def test_the_kernels_take_linear_weights_of_32_rows_and_64_columns_multiples():
    assert fits_semi_structured((4096, 9216)) and fits_semi_structured((64, 64))  # AlexNet's fc6
    assert not fits_semi_structured((1000, 4096))  # AlexNet's fc8: 1000 rows
    assert not fits_semi_structured((300, 784)) and not fits_semi_structured((64, 3, 3, 3))


@pytest.mark.parametrize("text", ["2-4", "4:2", "0:4", "2:4:8", "two:four", "3:5", "2:8"])
def test_a_pattern_the_kernels_do_not_run_is_refused_in_one_line(text):
    with pytest.raises(ValueError, match=f"pruning.pattern is {text}; the sparse tensor cores run 2:4 "):
        parse_pattern(text)
    with pytest.raises(UserError, match="e.g. pruning.pattern=2:4"):
        plan_run(compose_config(f"pruning.pattern={text}"))


def test_a_sensitivity_analysis_with_a_pattern_is_refused():
    with pytest.raises(UserError, match="task=sensitivity prunes one layer at a time by its threshold alone"):
        plan_run(compose_config("task=sensitivity", "dataset.val_split=128", "pruning.pattern=2:4"))


WIDE = ["model=custom", "model._target_=own_nets.Wide", "dataset=synthetic", "dataset.num_train=256",
        "dataset.num_test=64", "train.epochs=1", "retrain.epochs=1", "pruning.pattern=2:4"]  # fmt: skip


@pytest.mark.parametrize(
    "policy",
    [["pruning=global", "pruning.target=1.5", "pruning.iterations=1"],
     ["pruning=gradual", "pruning.target=1.5", "pruning.end=1", "pruning.frequency=2"]],
    ids=["global", "gradual"],
)  # fmt: skip
def test_a_policys_target_is_met_exactly_within_the_pattern(policy, tmp_path):
    """The policy chooses within the 2:4 masks: its count is exact and the patterned layer stays 2:4."""
    run_in_process(tmp_path, *WIDE, *policy)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    weights = [state[f"layers.{index}.weight"] for index in (1, 3, 5)]
    total, kept = sum(w.numel() for w in weights), sum(int(torch.count_nonzero(w)) for w in weights)
    assert kept == round(total / 1.5)  # dense enough that a pattern applied after the cut would remove more
    assert ((state["layers.3.weight"] != 0).reshape(64, 16, 4).sum(dim=2) <= 2).all()


def test_a_run_with_2_4_patterns_the_layers_that_fit_and_prunes_the_others_as_before(tmp_path):
    run_in_process(tmp_path, *WIDE, "pruning.iterations=2", "pruning.sensitivity=0.5")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    middle = state["layers.3.weight"] != 0
    assert (middle.reshape(64, 16, 4).sum(dim=2) <= 2).all() and middle.sum() < 0.5 * middle.numel()
    first = state["layers.1.weight"] != 0  # 784 columns: not a shape the kernels take, the threshold alone
    assert (first.reshape(64, 196, 4).sum(dim=2) > 2).any()
    layers = pd.read_csv(tmp_path / "layers.csv").query("iteration == 2 and phase == 'retrain'").set_index("layer")
    assert layers.loc["layers.3", "weights_nonzero"] == int(middle.sum())


# Wide's 784 x 64 + 64 x 64 + 64 x 10 = 54,912 prunable weights; 2:4 on the 64 x 64 layer alone removes 2,048 of
# them: 52,864 kept, 54,912 / 52,864 = 1.0387x before the policy prunes anything.
WIDE_TOTAL, WIDE_PATTERN_KEPT = 54_912, 52_864


@pytest.mark.parametrize(
    "policy",
    [["pruning=global"], ["pruning=lamp"], ["pruning=gradual", "pruning.end=1"]],
    ids=["global", "lamp", "gradual"],
)
def test_a_target_below_what_the_pattern_alone_reaches_is_refused_before_any_training(policy):
    """Such a run would end past its target (the policy has nothing left to prune): refused in one line."""
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*WIDE, *policy, "pruning.target=1.02"))
    assert str(refused.value) == (
        "pruning.target=1.02 is below the 1.04x that pruning.pattern=2:4 alone reaches on model=own_nets.Wide: "
        "raise pruning.target to at least 1.04 or drop pruning.pattern"
    )


@pytest.mark.parametrize("target", [WIDE_TOTAL / WIDE_PATTERN_KEPT, 1.04, 1.2])
def test_a_target_at_or_above_the_patterns_own_compression_keeps_exactly_its_count(target):
    plan = plan_run(compose_config(*WIDE, "pruning=global", f"pruning.target={target!r}", "pruning.iterations=1"))
    generator = torch.Generator().manual_seed(0)
    shapes = {"layers.1": (64, 784), "layers.3": (64, 64), "layers.5": (10, 64)}

    class Run:
        weights = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
        masks = {name: torch.ones(shape, dtype=torch.bool) for name, shape in shapes.items()}

    masks = plan.policy.prune(1, Run()).masks
    kept = sum(int(mask.sum()) for mask in masks.values())
    assert kept == round(WIDE_TOTAL / target) and kept <= WIDE_PATTERN_KEPT
    assert (masks["layers.3"].reshape(64, 16, 4).sum(dim=2) <= 2).all()
