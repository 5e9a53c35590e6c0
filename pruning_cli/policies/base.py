"""The seam between a run and the way it prunes: what a pruning policy is asked, and what it may see.

A run (run/pruning_run.PruningRun) owns the phases, the checkpoints, resume and the CSVs; a policy owns the choice of
masks. The run asks it, at each iteration, for the step's masks (`prune`), after each retraining for a verdict
(keep, roll back to a named iteration, stop), and after each retraining step for masks to raise during training
(`during_retraining`). The policy's state travels with the run's through `state_dict` / `load_state_dict`. A
policy sees the run only through `RunView`, so a test can drive it with scripted weights and predictions.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import Tensor

from pruning_cli.config.schema import Freeze
from pruning_cli.pruning.step import LayerPruned


@dataclass(frozen=True)
class PolicyContext:
    """What a policy knows of the run before it starts: the model's prunable layers, the retraining, and the run's
    seed (for a policy that draws at random)."""

    model: str
    layer_kinds: dict[str, str]  # `conv` or `fc`, in forward order
    layer_sizes: dict[str, int]  # weights per prunable layer (for a 10-class model: the checks before any work)
    freeze: Freeze  # retrain.freeze
    retrain_epochs: int
    validation: bool  # whether the run holds out a validation split
    seed: int = 0


class RunView(Protocol):
    """What a policy may see of a run while it goes: the prunable weights, their masks, and which validation images
    the model gets right."""

    weights: Mapping[str, Tensor]
    masks: Mapping[str, Tensor]

    def validation_correct(self) -> Tensor:
        """Per validation image, whether the model's top-1 prediction is right (bool, on the CPU); rank 0's on
        every process, so that all take the same decisions."""


@dataclass(frozen=True)
class PruneStep:
    """One iteration's pruning: the new masks (every layer's) and a record per layer pruned."""

    masks: dict[str, Tensor]
    records: dict[str, LayerPruned]


@dataclass(frozen=True)
class Verdict:
    """What becomes of a retrained model: kept (`rollback_to` None) or replaced by the model of iteration
    `rollback_to` (0: dense); `stop` ends the pruning there. `figures`: what the decision read, for the retraining's
    row of metrics.csv (records.METRICS's verdict columns)."""

    rollback_to: int | None = None
    stop: bool = False
    figures: Mapping[str, float | int | str] = field(default_factory=dict)

    def kept(self, iteration: int) -> int:
        """The iteration whose model the run holds after this verdict on iteration `iteration`."""
        return iteration if self.rollback_to is None else self.rollback_to


KEEP = Verdict()


# Every `pruning=<name>` choice and the policy class that carries it out, filled as the policies' modules are
# imported (policies.registry imports them all): a class claims its names in `choices`.
CHOICES: dict[str, type["PruningPolicy"]] = {}


class PruningPolicy:
    """A way to choose masks. Subclasses name their `pruning=` choices in `choices` (each the name of a YAML file in
    configs/pruning/), set `settings` (their config schema, a dataclass; its `name` is set from the choice), check
    the settings in `__init__` (ValueError with a one-line message), and implement `prune`; the rest has defaults
    for a policy that neither searches nor prunes during training."""

    choices: ClassVar[tuple[str, ...]] = ()
    settings: ClassVar[type]
    # Whether it makes choices on the validation split: the run then refuses a `train.checkpoint` that has seen it,
    # and the report draws the validation curve it tested.
    reads_validation: ClassVar[bool] = False
    # Whether every run of it has all `iterations` of its settings: the report then calls a shorter one unfinished.
    runs_every_iteration: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register the class under each name of its own `choices` (a subclass inherits none of them)."""
        super().__init_subclass__(**kwargs)
        for name in cls.__dict__.get("choices", ()):
            claimed = CHOICES.get(name)
            if claimed is not None and claimed.__qualname__ != cls.__qualname__:
                raise TypeError(f"pruning={name} is claimed by both {claimed.__qualname__} and {cls.__qualname__}")
            CHOICES[name] = cls

    @classmethod
    def label(cls, settings: Mapping[str, Any]) -> str:
        """How the report names a run of this policy (its schedule), from the pruning settings the run recorded."""
        return str(settings.get("name"))

    def __init__(self, settings: Any, context: PolicyContext) -> None:
        self.config, self.context = settings, context

    @property
    def iterations(self) -> int:
        """Prune -> retrain iterations, at most (a search may stop before)."""
        return self.config.iterations

    def prune(self, iteration: int, run: RunView) -> PruneStep | None:
        """The masks of iteration `iteration` (1-based); None: nothing more to prune, the run stops pruning."""
        raise NotImplementedError

    def freeze(self, iteration: int) -> Freeze:
        """The kind of layer the retraining of iteration `iteration` holds fixed (retrain.freeze by default)."""
        return self.context.freeze

    def verdict(self, iteration: int, run: RunView) -> Verdict:
        """After retraining iteration `iteration`: keep the model, or roll back, and whether to go on."""
        return KEEP

    def during_retraining(
        self, iteration: int, optimizer_step: int, optimizer_steps: int, run: RunView
    ) -> dict[str, Tensor] | None:
        """Called after each of the `optimizer_steps` optimizer steps of a retraining (`optimizer_step` of them done
        so far): new masks to apply now, or None (the default: masks change only between retrainings)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue this policy (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class NoPruning(PruningPolicy):
    """The policy of a run that prunes nothing for good (a sensitivity analysis): no iteration."""

    @property
    def iterations(self) -> int:
        return 0


def floor_total(min_kept: float, context: PolicyContext, lamp: bool = False) -> int:
    """Weights a per-layer floor of `min_kept` (a share of each layer, at least one weight) keeps in all; `lamp`: a
    LAMP cut's, at least one weight a layer even at 0 (allocation.allocate)."""
    floored = min_kept or lamp
    return sum(max(1, math.ceil(min_kept * size)) for size in context.layer_sizes.values()) if floored else 0


def check_floors(keep: int, min_kept: float, context: PolicyContext, lamp: bool = False) -> None:
    """ValueError when the per-layer floor alone keeps more weights than the target allows (before any training:
    the cut would find it only after)."""
    floors = floor_total(min_kept, context, lamp)
    if floors > keep and not min_kept:
        raise ValueError(
            f"LAMP keeps at least one weight of each layer ({floors:,} of model={context.model}), more than the "
            f"{keep:,} that pruning.target leaves: lower pruning.target"
        )
    if floors > keep:
        raise ValueError(
            f"pruning.min_kept={min_kept} keeps at least {floors:,} weights of model={context.model}, more than the "
            f"{keep:,} that pruning.target leaves: lower pruning.min_kept or pruning.target"
        )


def check_target(target: float, context: PolicyContext) -> int:
    """The weights a compression `target` keeps (round(prunable / target)); ValueError for a target no model can
    reach: below 1, not finite, or keeping less than one weight."""
    total = sum(context.layer_sizes.values())
    if not 1 <= target <= total:
        raise ValueError(
            f"pruning.target is {target}; it must be a compression between 1 (dense) and {total:,} (one weight of "
            f"the {total:,} prunable weights of model={context.model} left), e.g. pruning.target=12"
        )
    return round(total / target)
