"""The paired bound a budgeted search decides with: known disagreement counts give a known bound."""

from statistics import NormalDist

import pytest
import torch

from pruning_cli.pruning.paired import PairedDrop


def test_counts_come_from_the_images_the_two_models_disagree_on():
    before = torch.tensor([True, True, True, False, False, True])
    after = torch.tensor([True, False, False, True, False, True])
    paired = PairedDrop.between(before, after)
    assert (paired.images, paired.lost, paired.gained) == (6, 2, 1)
    assert paired.drop == pytest.approx(1 / 6)


def test_a_known_disagreement_count_gives_its_known_bound():
    # 100 disagreements, 50 each way: no drop seen. At z = 1 (84.13% one-sided) Wilson's upper share is
    # (0.5 + 1/200 + sqrt(0.25/100 + 1/40000)) / (1 + 1/100) = 0.549752, so the drop is at most
    # (2 x 0.549752 - 1) x 100 / 5000 = 0.199008 points.
    paired = PairedDrop(images=5000, lost=50, gained=50)
    assert paired.drop == 0
    assert paired.upper_bound(NormalDist().cdf(1.0)) == pytest.approx(0.00199008, abs=1e-8)


@pytest.mark.parametrize(("lost", "gained", "confidence"), [(110, 90, 0.8), (30, 5, 0.9), (3, 40, 0.95), (7, 0, 0.8)])
def test_the_bound_is_where_the_score_test_just_rejects(lost, gained, confidence):
    """Wilson's upper share q solves (q - lost/m)^2 = z^2 q (1 - q) / m: checked on the bound, not its formula."""
    paired, z, m = PairedDrop(5000, lost, gained), NormalDist().inv_cdf(confidence), lost + gained
    share = (paired.upper_bound(confidence) * 5000 / m + 1) / 2
    assert share > lost / m or lost == m
    assert (share - lost / m) ** 2 == pytest.approx(z * z * share * (1 - share) / m, rel=1e-9)


def test_half_confidence_trusts_the_drop_seen_and_more_asks_for_a_margin():
    paired = PairedDrop(5000, 110, 90)  # 0.4 points lost
    assert paired.upper_bound(0.5) == pytest.approx(0.004, abs=1e-15)
    assert 0.004 < paired.upper_bound(0.8) < paired.upper_bound(0.9) < paired.upper_bound(0.99)


def test_the_same_drop_over_more_disagreements_is_less_certain():
    few, many = PairedDrop(5000, 30, 10), PairedDrop(5000, 220, 200)  # 0.4 points each
    assert few.drop == many.drop and few.upper_bound(0.8) < many.upper_bound(0.8)
    assert PairedDrop(5000, 0, 0).upper_bound(0.99) == 0  # identical predictions: nothing lost, surely


def test_a_model_compared_on_other_images_is_refused():
    with pytest.raises(ValueError, match="compared on different images"):
        PairedDrop.between(torch.ones(5, dtype=torch.bool), torch.ones(6, dtype=torch.bool))


def test_the_bound_never_leaves_what_the_disagreements_allow():
    """Between every disagreement a gain (-gained / n) and every one a loss ((lost + gained) / n)."""
    for lost, gained in [(0, 12), (12, 0), (1, 1), (400, 0)]:
        bound = PairedDrop(1000, lost, gained).upper_bound(0.999)
        assert -gained / 1000 < bound <= (lost + gained) / 1000 + 1e-15
