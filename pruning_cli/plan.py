"""The run's settings checked once, before any work, and turned into the plan the core follows.

The pure modules (`pruning/`) raise ValueError; here every check becomes the one-line UserError the user sees,
and the core receives plain values: which layers each iteration prunes, to what target, what it freezes.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from pruning_cli.config import Freeze, LevelKind, PhaseConfig, RunConfig, SensitivityTask
from pruning_cli.errors import UserError
from pruning_cli.models import ModelSpec, get_model_spec
from pruning_cli.pruning.schedule import pruning_schedule
from pruning_cli.pruning.step import LayerStep
from pruning_cli.pruning.targets import resolve_targets


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
class RunPlan:
    spec: ModelSpec
    iterations: list[IterationPlan]
    analysis: AnalysisPlan | None = None


def plan_run(config: RunConfig, processes: int = 1) -> RunPlan:
    """The plan of `config`, or a UserError naming the first bad setting and how to fix it."""
    spec = get_model_spec(config.model.name)
    check_phase("train", config.train, processes)
    check_phase("retrain", config.retrain, processes)
    if isinstance(config.task, SensitivityTask):
        if config.dataset.val_split == 0:
            raise UserError("a sensitivity analysis evaluates on held-out training data: set dataset.val_split=N")
        return RunPlan(spec, [], analysis_plan(config.task, list(spec.layers)))
    try:
        return RunPlan(spec, iteration_plans(config, spec))
    except ValueError as error:
        raise UserError(str(error)) from error


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


def analysis_plan(task: SensitivityTask, layer_names: list[str]) -> AnalysisPlan:
    """The layers and levels of a sensitivity analysis, checked."""
    if task.layer is not None and task.layer not in layer_names:
        raise UserError(
            f"task.layer={task.layer} is not a prunable layer of this model; choose one of {', '.join(layer_names)}"
        )
    levels = list(task.levels) if task.level is None else [task.level]
    check_levels(levels, task.level_kind)
    return AnalysisPlan(layer_names if task.layer is None else [task.layer], levels, task.level_kind)


def check_levels(levels: Sequence[float], kind: LevelKind) -> None:
    """Refuse levels no pruning step could use."""
    if not levels:
        raise UserError("task.levels is empty; give at least one level, e.g. task.levels=[0.5,1.0]")
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
