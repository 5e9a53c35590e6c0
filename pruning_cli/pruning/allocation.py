"""How many of its weights each layer keeps when one count is given for the whole network, and which ones.

The field's standard answers, as pure functions on tensors: one cut over the magnitudes of every layer together
(global magnitude pruning), one cut over LAMP's rescaled scores (Lee et al. 2021), or counts fixed per layer in
advance (uniform, or proportional to a table such as the paper's). Every function keeps exactly the count asked
for (when that many weights survive), breaks ties by position (layer order, then index in the weight), and only
ever shrinks a mask.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from pruning_cli.pruning.masks import count_nonzero, top_indices


class Scoring(Enum):
    """How each weight is scored: the lowest scores are cut."""

    magnitude = "magnitude"  # |w|
    lamp = "lamp"  # LAMP's rescaled score (Lee et al. 2021): each layer's largest weight scores 1


class Sharing(Enum):
    """How one overall count is shared between the layers."""

    global_ = "global"  # one cut over every layer's scores together (with a per-layer floor)
    uniform = "uniform"  # every layer keeps the same fraction
    paper = "paper"  # the layers keep fractions in the proportions of a table (the paper's % kept)


@dataclass(frozen=True)
class Allocation:
    """A way to keep one overall count of weights: how they are scored, and how the count is shared."""

    scoring: Scoring = Scoring.magnitude
    sharing: Sharing = Sharing.global_

    @property
    def floored(self) -> bool:
        """LAMP's global cut keeps at least one weight a layer even at min_kept 0: its largest-scores-1 argument
        fails when fewer weights than layers are kept, or a layer's survivors are all zero."""
        return self.scoring is Scoring.lamp and self.sharing is Sharing.global_


def allocate(
    allocation: Allocation,
    weights: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    keep: int,
    min_kept: float = 0.0,
    proportions: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """Masks keeping `keep` weights in all, scored and shared between the layers by `allocation`; `min_kept` is the
    per-layer floor of a global cut, `proportions` (per layer) those of the `paper` sharing."""
    scores = magnitude_scores(weights) if allocation.scoring is Scoring.magnitude else lamp_scores(weights, masks)
    if allocation.sharing is Sharing.global_:
        floored = min_kept or allocation.floored
        return global_cut(scores, masks, keep, floor_counts(masks, min_kept) if floored else None)
    sizes = {name: weight.numel() for name, weight in weights.items()}
    shares = proportions if allocation.sharing is Sharing.paper else dict.fromkeys(sizes, 1.0)
    return layer_cut(scores, masks, proportional_counts(sizes, shares, keep))


def magnitude_scores(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """|w|: global magnitude pruning's score."""
    return {name: weight.detach().abs() for name, weight in weights.items()}


def lamp_scores(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """LAMP: with a layer's surviving weights sorted by magnitude ascending, w_1 <= ... <= w_n, the score of w_u is
    w_u^2 / sum_{v >= u} w_v^2. The largest survivor of each layer scores 1. Equal magnitudes are ranked by index,
    the lowest last (scoring highest), so that the cut keeps the lowest indices among ties as the others do."""
    scores = {}
    for name, weight in weights.items():
        squares = (weight.detach().float() * masks[name]).flatten() ** 2
        # a stable sort of the reversed tensor: ascending magnitudes, ties in descending index
        ascending, reversed_order = torch.sort(squares.flip(0), stable=True)
        order = squares.numel() - 1 - reversed_order
        tail_sums = ascending.flip(0).cumsum(0).flip(0)
        sorted_scores = torch.where(tail_sums > 0, ascending / tail_sums.clamp_min(torch.finfo(torch.float32).tiny), 0)
        scores[name] = torch.empty_like(squares).scatter_(0, order, sorted_scores).view_as(weight)
    return scores


def floor_counts(masks: Mapping[str, Tensor], min_kept: float) -> dict[str, int]:
    """The weights each layer keeps whatever the cut: `min_kept` of its weights (at least one), at most its
    survivors."""
    return {
        name: min(int(torch.count_nonzero(mask)), max(1, math.ceil(min_kept * mask.numel())))
        for name, mask in masks.items()
    }


def global_cut(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], keep: int, floors: Mapping[str, int] | None = None
) -> dict[str, Tensor]:
    """Masks keeping the `keep` highest-scoring survivors over all layers, each layer at least its `floors[name]`
    highest (a per-layer floor, so that no layer is cut off). ValueError when the floors alone exceed `keep`.

    Putting only the short layers' floors first chooses what putting every floor first would: a layer that meets
    its floor in a cut keeps its best weights in it, its floor among them."""
    floors = floors or {}
    if sum(floors.values()) > keep:
        raise ValueError(f"the per-layer floor keeps {sum(floors.values())} weights, more than the {keep} asked for")
    ranked = {
        name: score.flatten().float().masked_fill(~masks[name].flatten(), -math.inf) for name, score in scores.items()
    }
    count = min(keep, count_nonzero(masks.values()))
    while True:  # most cuts meet every floor at once; each round puts the floors found short first in the order
        chosen = _split(_top_positions(torch.cat(list(ranked.values())), count), masks)
        short = [name for name, mask in chosen.items() if int(torch.count_nonzero(mask)) < floors.get(name, 0)]
        if not short:
            return chosen
        for name in short:
            ranked[name] = ranked[name].index_fill(0, _top_positions(ranked[name], floors[name]), math.inf)


def layer_cut(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], counts: Mapping[str, int]
) -> dict[str, Tensor]:
    """Masks keeping, in each layer, its `counts[name]` highest-scoring survivors (all of them if fewer survive)."""
    new_masks = {}
    for name, score in scores.items():
        alive = masks[name]
        ranked = score.flatten().float().masked_fill(~alive.flatten(), -math.inf)
        kept = torch.zeros_like(alive.flatten())
        kept[_top_positions(ranked, min(counts[name], int(torch.count_nonzero(alive))))] = True
        new_masks[name] = kept.view_as(alive)
    return new_masks


def proportional_counts(sizes: Mapping[str, int], proportions: Mapping[str, float], keep: int) -> dict[str, int]:
    """Per layer, how many weights to keep so that the counts sum to `keep` and stand in the given proportions of
    each layer's size (capped at the layer's size; the capped remainder goes to the others). Equal proportions
    give a uniform allocation; the paper's per-layer % kept gives its table scaled to another compression."""
    total = sum(sizes.values())
    if not 0 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} weights")
    low, high = 0.0, 1.0 / min(proportions[name] for name in sizes)  # the scale at which every layer is whole
    for _ in range(100):  # bisection on the common scale c: sum_l min(n_l, c p_l n_l) = keep
        middle = (low + high) / 2
        low, high = (middle, high) if _kept_at(middle, sizes, proportions) < keep else (low, middle)
    exact = {name: min(float(size), high * proportions[name] * size) for name, size in sizes.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(sizes, key=lambda name: counts[name] - exact[name])  # largest remainder first, stable
    for name in by_remainder[: keep - sum(counts.values())]:
        counts[name] += 1
    return counts


def _kept_at(scale: float, sizes: Mapping[str, int], proportions: Mapping[str, float]) -> float:
    return sum(min(float(size), scale * proportions[name] * size) for name, size in sizes.items())


def _top_positions(scores: Tensor, count: int) -> Tensor:
    """Positions of the `count` highest scores, of equal ones at the cut the lowest positions (as a stable sort
    would take them, by selection instead: a stable sort of VGG-16's 138M scores took 40 s on 2 cores)."""
    return top_indices(scores, count)


def _split(positions: Tensor, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Positions in the concatenation of the flattened masks, back to one mask per layer."""
    flat = torch.zeros(sum(mask.numel() for mask in masks.values()), dtype=torch.bool, device=positions.device)
    flat[positions] = True
    pieces = flat.split([mask.numel() for mask in masks.values()])
    return {name: piece.view_as(mask) for (name, mask), piece in zip(masks.items(), pieces, strict=True)}
