"""The run's settings checked once, before any work, and turned into the plan the core follows.

The pure modules (`pruning/`) raise ValueError; here every check becomes the one-line UserError the user sees,
and the core receives plain values: which layers each iteration prunes, to what target, what it freezes.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from pruning_cli.config import (
    AutoPruning,
    Freeze,
    LevelKind,
    PhaseConfig,
    QuantizeConfig,
    RunConfig,
    SensitivityTask,
)
from pruning_cli.errors import UserError
from pruning_cli.models import ModelSpec, get_model_spec
from pruning_cli.pruning.schedule import pruning_schedule
from pruning_cli.pruning.step import LayerStep
from pruning_cli.pruning.targets import resolve_targets
from pruning_cli.quantize.kmeans import shared_values


@dataclass(frozen=True)
class IterationPlan:
    """One prune -> retrain iteration: each pruned layer's step, and the kind of layer retraining holds fixed."""

    pruned: dict[str, LayerStep]
    freeze: Freeze


@dataclass(frozen=True)
class AnalysisPlan:
    """A sensitivity analysis: the layers pruned one at a time, and the levels of each."""

    layers: list[str]
    levels: list[float]
    kind: LevelKind


@dataclass(frozen=True)
class AutoPlan:
    """Budgeted pruning: the sensitivities each iteration may choose from, and what it may lose (fractions of
    validation top-1): in all (`budget`), and by one layer pruned alone before retraining (`layer_budget`, times
    `backoff` after each rolled-back iteration; `patience` of those in a row end the search)."""

    levels: list[float]
    budget: float
    layer_budget: float
    backoff: float
    patience: int

    def within_budget(self, top1: float, dense_top1: float) -> bool:
        """Whether `top1` loses at most `budget` against `dense_top1`; a loss of exactly the budget is within it
        (0.898 - 0.003 is 0.8950000000000001 in floating point, above an accuracy of 4,475 / 5,000)."""
        return top1 >= dense_top1 - self.budget - 1e-9


@dataclass(frozen=True)
class RunPlan:
    spec: ModelSpec
    iterations: list[IterationPlan]
    analysis: AnalysisPlan | None = None
    auto: AutoPlan | None = None  # the layers each iteration prunes are then chosen as the run goes
    quantize_bits: dict[str, int] | None = None  # trained quantization after the last retraining: {layer: bits}


def plan_run(config: RunConfig, processes: int = 1) -> RunPlan:
    """The plan of `config`, or a UserError naming the first bad setting and how to fix it."""
    spec = get_model_spec(config.model.name)
    check_phase("train", config.train, processes)
    check_phase("retrain", config.retrain, processes)
    if isinstance(config.task, SensitivityTask):
        if config.dataset.val_split == 0:
            raise UserError("a sensitivity analysis evaluates on held-out training data: set dataset.val_split=N")
        if config.quantize.enabled:
            raise UserError("task=sensitivity prunes without training afterwards, so it has nothing to quantize: "
                            "leave out quantize=kmeans")  # fmt: skip
        return RunPlan(spec, [], analysis_plan(config.task, list(spec.layers)))
    bits = quantize_plan(config.quantize, spec, processes)
    if isinstance(config.pruning, AutoPruning):
        auto = auto_plan(config, len(spec.layers))
        iterations = [IterationPlan({}, config.retrain.freeze)] * config.pruning.iterations
        return RunPlan(spec, iterations, auto=auto, quantize_bits=bits)
    try:
        return RunPlan(spec, iteration_plans(config, spec), quantize_bits=bits)
    except ValueError as error:
        raise UserError(str(error)) from error


def quantize_plan(quantize: QuantizeConfig, spec: ModelSpec, processes: int) -> dict[str, int] | None:
    """Each prunable layer's index bits for trained quantization (by layer kind), or None when it is off."""
    if not quantize.enabled:
        return None
    check_phase("quantize", quantize, processes)
    bits = {"conv": quantize.conv_bits, "fc": quantize.fc_bits}
    for kind, value in bits.items():
        try:
            shared_values(value)
        except ValueError:
            raise UserError(f"quantize.{kind}_bits is {value}; it must be 1..8 (2^bits - 1 shared values)") from None
    if quantize.kmeans_iterations < 1:
        raise UserError(f"quantize.kmeans_iterations is {quantize.kmeans_iterations}; it must be >= 1")
    return {name: bits[kind] for name, kind in spec.layer_kinds().items()}


def iteration_plans(config: RunConfig, spec: ModelSpec) -> list[IterationPlan]:
    """Per iteration, the layers pruned (those with a target, at their turn) and what retraining freezes."""
    pruning = config.pruning
    if pruning.iterations < 0:
        raise ValueError(f"pruning.iterations is {pruning.iterations}; it must be >= 0")
    targets = resolve_targets(list(spec.layers), pruning.sensitivity, pruning.layer_sensitivity, pruning.kept)
    schedule = pruning_schedule(spec.layer_kinds(), pruning.iterations, pruning.alternate, config.retrain.freeze)
    return [
        IterationPlan(
            {name: LayerStep(targets[name], turn) for name, turn in step.pruned.items() if name in targets}, step.freeze
        )
        for step in schedule
    ]


def auto_plan(config: RunConfig, layers: int) -> AutoPlan:
    """The choices of `pruning=auto`, checked: a validation split to make them on, levels, budgets."""
    pruning = config.pruning
    if config.dataset.val_split == 0:
        raise UserError("pruning=auto chooses on held-out training data: set dataset.val_split=N (e.g. 5000)")
    if pruning.kept is not None or pruning.layer_sensitivity is not None or pruning.alternate:
        raise UserError("pruning=auto chooses every layer's sensitivity itself: leave out pruning.kept, "
                        "pruning.layer_sensitivity and pruning.alternate")  # fmt: skip
    if pruning.iterations < 1:
        raise UserError(f"pruning.iterations is {pruning.iterations}; pruning=auto needs at least 1")
    # null: the layers share the budget (pruned together, their losses add up before retraining recovers them).
    layer_budget = pruning.budget / layers if pruning.layer_budget is None else pruning.layer_budget
    if pruning.budget < 0 or layer_budget < 0:
        raise UserError(
            f"pruning.budget is {pruning.budget} and pruning.layer_budget {layer_budget}; both must be >= 0 points"
        )
    if not 0 < pruning.backoff <= 1 or pruning.patience < 1:
        raise UserError(
            f"pruning.backoff is {pruning.backoff} and pruning.patience {pruning.patience}: the backoff must be in "
            "(0, 1] (e.g. 0.5) and the patience at least 1 (1 stops at the first iteration past the budget)"
        )
    check_levels(list(pruning.levels), LevelKind.sensitivity, "pruning.levels")
    return AutoPlan(sorted(pruning.levels), pruning.budget / 100, layer_budget / 100, pruning.backoff, pruning.patience)


def analysis_plan(task: SensitivityTask, layer_names: list[str]) -> AnalysisPlan:
    """The layers and levels of a sensitivity analysis, checked."""
    if task.layer is not None and task.layer not in layer_names:
        raise UserError(
            f"task.layer={task.layer} is not a prunable layer of this model; choose one of {', '.join(layer_names)}"
        )
    levels = list(task.levels) if task.level is None else [task.level]
    check_levels(levels, task.level_kind, "task.levels")
    return AnalysisPlan(layer_names if task.layer is None else [task.layer], levels, task.level_kind)


def check_levels(levels: Sequence[float], kind: LevelKind, option: str) -> None:
    """Refuse levels no pruning step could use."""
    if not levels:
        raise UserError(f"{option} is empty; give at least one level, e.g. {option}=[0.5,1.0]")
    for level in levels:
        if kind is LevelKind.sensitivity and level < 0:
            raise UserError(f"sensitivity level {level} is negative; levels must be >= 0 (threshold = level x std)")
        if kind is LevelKind.kept and not 0 < level <= 1:
            raise UserError(f"kept level {level} is outside (0, 1]; it is the fraction of the layer's weights kept")


def check_phase(name: str, phase: PhaseConfig, processes: int = 1) -> None:
    """Refuse settings no training phase can run with."""
    for key, value, low in (("epochs", phase.epochs, 0), ("batch_size", phase.batch_size, 1)):
        if value < low:
            raise UserError(f"{name}.{key} is {value}; it must be >= {low}")
    if phase.batch_size % processes:
        raise UserError(
            f"{name}.batch_size is {phase.batch_size}, which {processes} processes cannot share evenly; it is the "
            f"global batch: make it a multiple of {processes}"
        )
    if phase.lr <= 0:
        raise UserError(f"{name}.lr is {phase.lr}; it must be > 0")
    if phase.max_batches is not None and phase.max_batches < 1:
        raise UserError(f"{name}.max_batches is {phase.max_batches}; it must be >= 1, or null for whole epochs")
