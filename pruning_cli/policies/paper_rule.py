"""The paper's rule (`pruning=iterative`, `pruning=oneshot`): each layer loses every weight with
|w| < sensitivity x std, or walks geometrically to a final kept fraction, over `iterations` prune -> retrain steps."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pruning_cli.config.ranges import NON_NEGATIVE, ranged
from pruning_cli.config.schema import Freeze, PruningConfig, StdSource
from pruning_cli.policies.base import PolicyContext, PruneStep, PruningPolicy, RunView
from pruning_cli.pruning.schedule import pruning_schedule
from pruning_cli.pruning.step import LayerStep, prune_step, surviving_std
from pruning_cli.pruning.targets import resolve_targets


@dataclass
class PaperRulePruning(PruningConfig):
    """`pruning=iterative` (3 iterations) and `pruning=oneshot` (1)."""

    iterations: int = ranged(NON_NEGATIVE, 3)
    # Threshold = sensitivity x std for every prunable layer; null leaves unnamed layers dense.
    sensitivity: float | None = ranged(NON_NEGATIVE, 1.0)
    # Per-layer overrides, {layer: sensitivity}. Untyped and null by default so that `pruning.kept={fc1:0.08}`
    # replaces the node (Hydra would merge a dict into a typed dict node and refuse its new keys); the CLI
    # checks names and values instead.
    layer_sensitivity: Any = None
    # Final fraction of each layer's weights kept, {layer: fraction} (the paper's per-layer %); wins over sensitivities.
    kept: Any = None
    std: StdSource = StdSource.surviving
    # The paper's alternation: odd iterations prune the fc layers and retrain them with conv frozen, even
    # iterations prune conv and retrain it with fc frozen (pruning/schedule.py).
    alternate: bool = False


class PaperRule(PruningPolicy):
    """The paper's rule, replayed: the same targets at every run, no decision taken on data."""

    choices = ("iterative", "oneshot")
    settings = PaperRulePruning
    runs_every_iteration = True

    @classmethod
    def label(cls, settings: Mapping[str, Any]) -> str:
        """As the paper's Fig. 5 names it: iterative or one-shot."""
        iterations = settings.get("iterations")
        if isinstance(iterations, int):
            return "iterative" if iterations > 1 else "one-shot"
        return {"oneshot": "one-shot", None: "?"}.get(settings.get("name"), str(settings.get("name")))

    def __init__(self, settings: PaperRulePruning, context: PolicyContext) -> None:
        super().__init__(settings, context)
        layers = list(context.layer_kinds)
        targets = resolve_targets(layers, settings.sensitivity, settings.layer_sensitivity, settings.kept)
        schedule = pruning_schedule(context.layer_kinds, settings.iterations, settings.alternate, context.freeze)
        self.steps = [
            (
                {name: LayerStep(targets[name], turn) for name, turn in step.pruned.items() if name in targets},
                step.freeze,
            )
            for step in schedule
        ]
        self.dense_std: dict[str, float] = {}  # std: dense, fixed at the first pruning step

    def freeze(self, iteration: int) -> Freeze:
        return self.steps[iteration - 1][1]

    def prune(self, iteration: int, run: RunView) -> PruneStep:
        pruned, _ = self.steps[iteration - 1]
        if self.config.std is StdSource.dense and not self.dense_std:
            self.dense_std = {name: surviving_std(weight, run.masks[name]) for name, weight in run.weights.items()}
        dense_std = self.dense_std if self.config.std is StdSource.dense else None
        masks, records = prune_step(run.weights, run.masks, pruned, dense_std)
        return PruneStep(masks, records)

    def state_dict(self) -> dict[str, Any]:
        return {"dense_std": self.dense_std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense_std = dict(state["dense_std"])
