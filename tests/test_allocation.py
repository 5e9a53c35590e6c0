"""One count for the whole network, shared between layers: global magnitude, LAMP, uniform, proportional, and
the cubic schedule of gradual pruning, on hand-made tensors checked against hand computations."""

import math

import pytest
import torch

from pruning_cli.pruning.allocation import (
    Allocation,
    Scoring,
    Sharing,
    _top_positions,
    allocate,
    floor_counts,
    global_cut,
    lamp_scores,
    magnitude_scores,
    proportional_counts,
)
from pruning_cli.pruning.schedule import cubic_sparsity


def _layers(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv": torch.randn(4, 3, 3, 3, generator=generator),
        "fc1": torch.randn(20, 30, generator=generator) * 0.1,
        "fc2": torch.randn(10, 20, generator=generator),
    }


def _full(weights):
    return {name: torch.ones_like(weight, dtype=torch.bool) for name, weight in weights.items()}


@pytest.mark.parametrize("keep", [1, 57, 300, 907])
def test_the_global_cut_keeps_the_k_largest_magnitudes_across_layers(keep):
    weights = _layers()
    masks = global_cut(magnitude_scores(weights), _full(weights), keep)
    everything = sorted(
        (abs(value) for weight in weights.values() for value in weight.flatten().tolist()), reverse=True
    )
    kth = everything[keep - 1]  # by hand: the keep-th largest magnitude of all weights together
    assert sum(int(mask.sum()) for mask in masks.values()) == keep
    for name, weight in weights.items():
        assert torch.equal(masks[name], weight.abs() >= kth)


def test_ties_are_broken_by_position_so_the_count_is_exact():
    weights = {"a": torch.ones(3), "b": torch.ones(4)}  # seven equal magnitudes
    masks = global_cut(magnitude_scores(weights), _full(weights), 4)
    assert masks["a"].tolist() == [True, True, True] and masks["b"].tolist() == [True, False, False, False]


def test_a_pruned_weight_is_never_revived_even_when_it_is_large():
    weights = {"a": torch.tensor([5.0, 1.0, 2.0])}
    masks = global_cut(magnitude_scores(weights), {"a": torch.tensor([False, True, True])}, 2)
    assert masks["a"].tolist() == [False, True, True]


def test_the_per_layer_floor_keeps_a_layer_a_global_cut_would_cut_off():
    weights = {"big": torch.arange(1.0, 101.0), "small": torch.full((50,), 0.01)}
    cut_off = global_cut(magnitude_scores(weights), _full(weights), 10)
    assert int(cut_off["small"].sum()) == 0  # without a floor, the small layer is gone
    floors = floor_counts(_full(weights), 0.1)
    assert floors == {"big": 10, "small": 5}
    with pytest.raises(ValueError, match="the per-layer floor keeps 15 weights, more than the 10 asked for"):
        global_cut(magnitude_scores(weights), _full(weights), 10, floors)
    kept = global_cut(magnitude_scores(weights), _full(weights), 20, floors)
    assert int(kept["small"].sum()) == 5 and int(kept["big"].sum()) == 15
    assert kept["big"][-15:].all()  # the rest of the count goes to the largest magnitudes


def _floored_cut_by_hand(scores, masks, keep, floors):
    """The floored global cut written out: each layer's `floor` best survivors first (ties: the lower index), then
    the best of all the other survivors (ties: the earlier layer, then the lower index), up to `keep`."""
    kept = {name: set() for name in scores}
    for name, score in scores.items():
        alive = [i for i in range(score.numel()) if masks[name].flatten()[i]]
        kept[name] |= set(sorted(alive, key=lambda i: (-score.flatten()[i].item(), i))[: floors[name]])
    rest = [
        (-score.flatten()[i].item(), order, i, name)
        for order, (name, score) in enumerate(scores.items())
        for i in range(score.numel())
        if masks[name].flatten()[i] and i not in kept[name]
    ]
    for _, _, i, name in sorted(rest)[: keep - sum(floors.values())]:
        kept[name].add(i)
    return {name: sorted(indices) for name, indices in kept.items()}


@pytest.mark.parametrize(("keep", "min_kept"), [(60, 0.0), (60, 0.05), (300, 0.05), (300, 0.1)])
def test_the_floored_global_cut_is_the_one_written_out_by_hand(keep, min_kept):
    """Whether a floor binds (fc1 would keep none of its survivors at 60, 44 at 300) or not (no floors; 5% at 300),
    on magnitudes with ties (rounded to one decimal) and the survivors of an earlier cut."""
    weights = {name: (weight * 10).round() / 10 for name, weight in _layers(seed=2).items()}
    masks = {name: weight.abs() > 0.05 for name, weight in weights.items()}
    floors = floor_counts(masks, min_kept)
    chosen = global_cut(magnitude_scores(weights), masks, keep, floors)
    by_hand = _floored_cut_by_hand(magnitude_scores(weights), masks, keep, floors)
    assert {name: mask.flatten().nonzero().flatten().tolist() for name, mask in chosen.items()} == by_hand


def test_a_layer_pushed_under_its_floor_by_another_layers_floor_gets_it_too():
    """c meets its floor of 1 in the plain cut (9.5 is third), and loses it once b's floor of 3 goes first."""
    weights = {"a": torch.tensor([10.0, 9.8, 9.0, 8.0]), "b": torch.tensor([0.1, 0.2, 0.3]), "c": torch.tensor([9.5])}
    floors = {"a": 1, "b": 3, "c": 1}
    chosen = global_cut(magnitude_scores(weights), _full(weights), 5, floors)
    by_hand = _floored_cut_by_hand(magnitude_scores(weights), _full(weights), 5, floors)
    assert {name: mask.nonzero().flatten().tolist() for name, mask in chosen.items()} == by_hand
    assert by_hand == {"a": [0], "b": [0, 1, 2], "c": [0]}


def test_lamp_scores_follow_the_formula():
    weight = torch.tensor([3.0, -1.0, 2.0, 0.5])
    # ascending magnitudes 0.5, 1, 2, 3; squares 0.25, 1, 4, 9; tail sums 14.25, 14, 13, 9
    expected = torch.tensor([9 / 9, 1 / 14, 4 / 13, 0.25 / 14.25])
    scores = lamp_scores({"w": weight}, {"w": torch.ones(4, dtype=torch.bool)})["w"]
    assert torch.allclose(scores, expected)
    alive = torch.tensor([True, False, True, True])  # a pruned weight leaves the tail sums
    scores = lamp_scores({"w": weight}, {"w": alive})["w"]
    assert scores[[0, 2, 3]].tolist() == pytest.approx([1.0, 4 / 13, 0.25 / 13.25])


def test_lamp_never_cuts_off_a_layer():
    weights = {"big": torch.arange(1.0, 101.0), "small": torch.full((50,), 0.01)}
    masks = global_cut(lamp_scores(weights, _full(weights)), _full(weights), 2)
    assert int(masks["big"].sum()) == 1 and int(masks["small"].sum()) == 1  # each layer's largest scores 1


def test_proportional_counts_sum_exactly_and_cap_at_the_layer_size():
    sizes = {"a": 1000, "b": 100, "c": 10}
    counts = proportional_counts(sizes, {"a": 8, "b": 9, "c": 26}, 111)
    assert sum(counts.values()) == 111 and all(counts[name] <= size for name, size in sizes.items())
    assert counts["a"] / 1000 == pytest.approx(8 / 26 * counts["c"] / 10, abs=0.01)
    capped = proportional_counts(sizes, {"a": 1, "b": 1, "c": 100}, 200)
    assert capped["c"] == 10 and sum(capped.values()) == 200  # c whole; the remainder shared by a and b
    assert proportional_counts(sizes, dict.fromkeys(sizes, 1.0), 555) == {"a": 500, "b": 50, "c": 5}


EVERY_ALLOCATION = [Allocation(scoring, sharing) for scoring in Scoring for sharing in Sharing]
GLOBAL, LAMP = Allocation(Scoring.magnitude, Sharing.global_), Allocation(Scoring.lamp, Sharing.global_)
UNIFORM = Allocation(Scoring.magnitude, Sharing.uniform)


@pytest.mark.parametrize("allocation", EVERY_ALLOCATION, ids=lambda a: f"{a.scoring.value}-{a.sharing.value}")
def test_every_allocation_keeps_the_count_asked_for(allocation):
    weights = _layers(1)
    masks = allocate(allocation, weights, _full(weights), 123, 0.01, {"conv": 60, "fc1": 10, "fc2": 20})
    assert sum(int(mask.sum()) for mask in masks.values()) == 123


def test_the_cubic_schedule_prunes_most_early_and_only_every_frequency_steps():
    schedule = [cubic_sparsity(step, 100, 1100, 100, 0.9) for step in (0, 100, 150, 199, 200, 600, 1099, 1100, 5000)]
    # s_t = 0.9 + (0 - 0.9) (1 - (t - 100) / 1000)^3 at t = 100, 200, ..., held between raises
    assert schedule == pytest.approx([0, 0, 0, 0, 0.9 * (1 - 0.9**3), 0.9 * (1 - 0.5**3), 0.9 * (1 - 0.1**3), 0.9, 0.9])


def test_lamp_keeps_one_weight_in_every_layer_even_one_whose_survivors_are_all_zero():
    weights = {"a": torch.tensor([1.0, 2.0, 3.0]), "zero": torch.zeros(3), "b": torch.tensor([4.0, 5.0])}
    # LAMP scores: a 1/14, 4/13, 1; zero 0, 0, 0 (its tail sums are 0); b 16/41, 1. Without a floor a cut of 3
    # keeps a's 3, b's 5 and b's 4, and empties "zero"; the floor (one weight, the lowest index among its ties)
    # keeps it.
    masks = allocate(LAMP, weights, _full(weights), 3)
    assert {name: mask.tolist() for name, mask in masks.items()} == {
        "a": [False, False, True],
        "zero": [True, False, False],
        "b": [False, True],
    }
    masks = allocate(LAMP, weights, _full(weights), 4)  # the fourth goes to the next score, b's 4
    assert masks["b"].tolist() == [True, True] and sum(int(mask.sum()) for mask in masks.values()) == 4


def test_lamp_asked_for_fewer_weights_than_layers_is_refused_as_the_global_cut_is():
    weights = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0]), "c": torch.tensor([5.0, 6.0])}
    with pytest.raises(ValueError, match="the per-layer floor keeps 3 weights, more than the 2 asked for"):
        allocate(LAMP, weights, _full(weights), 2)  # one of the three layers would be emptied
    with pytest.raises(ValueError, match="the per-layer floor keeps 3 weights, more than the 2 asked for"):
        allocate(GLOBAL, weights, _full(weights), 2, 0.01)


def test_lamp_keeps_the_min_kept_floor_of_every_layer():
    weights = {"big": torch.arange(1.0, 101.0), "small": torch.full((50,), 0.01)}
    # Without a floor, LAMP shares 15 weights 7 / 8 (small's equal magnitudes score 1, 1/2, 1/3, ...); with
    # min_kept=0.1 each layer keeps its 10% first: big its 10 largest, small its 5 lowest indices (all tied).
    bare = allocate(LAMP, weights, _full(weights), 15)
    assert int(bare["big"].sum()) == 7 and int(bare["small"].sum()) == 8
    floored = allocate(LAMP, weights, _full(weights), 15, 0.1)
    assert floored["big"].nonzero().flatten().tolist() == list(range(90, 100))
    assert floored["small"].nonzero().flatten().tolist() == list(range(5))
    more = allocate(LAMP, weights, _full(weights), 20, 0.1)
    assert int(more["big"].sum()) >= 10 and int(more["small"].sum()) >= 5
    assert sum(int(mask.sum()) for mask in more.values()) == 20


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("allocation", "expected"),
    [
        (GLOBAL, {"a": list(range(10)), "b": []}),  # one order: layer a, then b, each by index
        (UNIFORM, {"a": list(range(6)), "b": list(range(4))}),  # 12:8 of 10 is 6 and 4
        (LAMP, {"a": list(range(5)), "b": list(range(5))}),  # each layer's ties score 1, 1/2, 1/3, ...
    ],
    ids=["global", "uniform", "lamp"],
)
def test_equal_magnitudes_keep_the_lowest_indices_and_the_exact_count(allocation, expected, device):
    """Ties at the cut are broken by position (layer order, then flat index: the lowest first), the same on every
    device."""
    signs = torch.tensor([1.0, -1.0]).repeat(10)
    weights = {"a": (0.5 * signs[:12]).view(3, 4).to(device), "b": (0.5 * signs[12:]).to(device)}
    masks = allocate(allocation, weights, _full(weights), 10)
    kept = {name: mask.flatten().nonzero().flatten().tolist() for name, mask in masks.items()}
    assert kept == expected


def test_the_cut_selects_what_a_stable_sort_would_keep_on_tied_and_pruned_scores():
    """The cuts find their survivors by selection; a stable descending sort (an independent rule) keeps the same."""
    generator = torch.Generator().manual_seed(0)
    for size in (1, 5, 100, 10_000):
        for _ in range(20):
            scores = torch.randint(0, 5, (size,), generator=generator).float()  # many ties
            scores[torch.rand(size, generator=generator) < 0.3] = -math.inf  # pruned, as the cuts rank them
            for count in {0, 1, size // 3, size}:
                expected = torch.sort(scores, descending=True, stable=True).indices[:count]
                assert set(_top_positions(scores, count).tolist()) == set(expected.tolist())
