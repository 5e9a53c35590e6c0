"""Which layers each pruning iteration prunes, and which kind of layer its retraining holds fixed.

By default every iteration prunes every layer and retrains with `retrain.freeze`. The paper also prunes the fc
layers and retrains them with the conv layers frozen, then prunes the conv layers and retrains them with the fc
layers frozen (conv layers are the more sensitive); `alternate` does that in one run: odd iterations fc, even
iterations conv. Each layer then walks its kept-fraction schedule over its own turns only.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from pruning_cli.config.schema import Freeze

FC, CONV = "fc", "conv"


@dataclass(frozen=True)
class Turn:
    """One layer's pruning step within its own schedule: step `step` (1-based) of `steps`."""

    step: int
    steps: int


@dataclass(frozen=True)
class Iteration:
    """What one prune -> retrain iteration does: the layers it prunes (with their turn) and what it freezes."""

    pruned: dict[str, Turn]
    freeze: Freeze


def pruning_schedule(kinds: Mapping[str, str], iterations: int, alternate: bool, freeze: Freeze) -> list[Iteration]:
    """The plan for iterations 1..`iterations` of layers whose kind (`fc` or `conv`) is given in forward order."""
    if not alternate:
        return [Iteration({name: Turn(i, iterations) for name in kinds}, freeze) for i in range(1, iterations + 1)]
    if freeze is not Freeze.none:
        raise ValueError(
            "pruning.alternate=true freezes the layers it does not prune; "
            f"leave retrain.freeze=none, not {freeze.value}"
        )
    if set(kinds.values()) != {FC, CONV}:
        raise ValueError(
            "pruning.alternate=true needs conv and fc layers to alternate between; this model has one kind"
        )
    if iterations < 2:
        raise ValueError(f"pruning.alternate=true needs pruning.iterations >= 2 (fc, then conv), not {iterations}")
    turn_kinds = [FC if i % 2 else CONV for i in range(1, iterations + 1)]
    steps = {kind: turn_kinds.count(kind) for kind in (FC, CONV)}
    plan = []
    for i, kind in enumerate(turn_kinds):
        step = turn_kinds[: i + 1].count(kind)
        pruned = {name: Turn(step, steps[kind]) for name, layer_kind in kinds.items() if layer_kind == kind}
        plan.append(Iteration(pruned, Freeze.conv if kind == FC else Freeze.fc))
    return plan


def cubic_sparsity(step: int, start: int, end: int, frequency: int, final: float, initial: float = 0.0) -> float:
    """Gradual magnitude pruning's sparsity after `step` training steps (Zhu and Gupta 2017):
    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3, raised only every `frequency` steps from `start` (t0),
    and `final` from `end` (t1) on. Most is pruned early, while the network is still plastic."""
    if step < start:
        return initial
    if step >= end:
        return final
    last_raise = start + (step - start) // frequency * frequency
    progress = (last_raise - start) / (end - start)
    return final + (initial - final) * (1 - progress) ** 3
