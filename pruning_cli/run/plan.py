"""The run's settings checked once, before any work, and turned into the plan the core follows.

The pure modules (`pruning/`) raise ValueError; here every check becomes the one-line UserError the user sees,
and the core receives plain values and the pruning policy, its settings checked.
"""

import importlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch.optim.lr_scheduler import LRScheduler

from pruning_cli.config.ranges import range_problems
from pruning_cli.config.schema import (
    ImageFolderDataset,
    LevelKind,
    MnistLikeDataset,
    OptimizerConfig,
    PhaseConfig,
    QuantizeConfig,
    RetrainConfig,
    RunConfig,
    ScheduleInterval,
    SchedulerConfig,
    SensitivityTask,
    SyntheticDataset,
    TrainConfig,
)
from pruning_cli.errors import UserError
from pruning_cli.models import ModelSpec, get_model_spec
from pruning_cli.models.discover import torchvision_classifiers
from pruning_cli.models.registry import CUSTOM, MODELS, TORCHVISION, custom_spec, model_key
from pruning_cli.policies import NoPruning, Patterned, PolicyContext, PruningPolicy, build_policy
from pruning_cli.pruning.nm_sparsity import fits_semi_structured, parse_pattern
from pruning_cli.training.loop import Optimization, Schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisPlan:
    """A sensitivity analysis: the layers pruned one at a time, and the levels of each."""

    layers: list[str]
    levels: list[float]
    kind: LevelKind


@dataclass(frozen=True)
class RunSettings:
    """What a run's phases read of the config, taken once here: the run never reads the config itself."""

    model_name: str  # as messages, CSVs and reports name it (models.registry.model_key)
    model_weights: str | None  # pretrained torchvision weights to start from
    discovered: bool  # model=torchvision or model=custom: its outputs are checked against the data set's classes
    seed: int
    compile: bool
    resume: bool
    eval_batch_size: int
    train: TrainConfig
    retrain: RetrainConfig
    quantize: QuantizeConfig
    optimization: Optimization  # every phase's optimizer and learning-rate schedule

    @classmethod
    def of(cls, config: RunConfig) -> "RunSettings":
        model = config.model
        return cls(
            model_name=model_key(model.name, model.arch, model._target_),
            model_weights=model.weights,
            discovered=model.name in (CUSTOM, TORCHVISION),
            seed=config.seed,
            compile=config.compile,
            resume=config.resume,
            eval_batch_size=config.dataset.eval_batch_size,
            train=config.train,
            retrain=config.retrain,
            quantize=config.quantize,
            optimization=Optimization(optimizer_factory(config.optimizer), learning_rate_schedule(config.scheduler)),
        )


def _named_class(path: str, base: type, setting: str, kind: str, fix: str) -> type:
    """The class at import path `path`, a subclass of `base`; else a one-line error naming `setting`, the `kind` of
    class it must name, and the fix."""
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        found = None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise UserError(f"{setting}={path} names no {kind} class; {fix}")
    return found


def optimizer_factory(settings: OptimizerConfig) -> Callable[..., torch.optim.Optimizer]:
    """The optimizer class `settings._target_` names, with its other arguments."""
    fix = "choose optimizer=sgd or adamw, or give an import path such as torch.optim.Adam"
    optimizer = _named_class(settings._target_, torch.optim.Optimizer, "optimizer._target_", "torch optimizer", fix)
    return partial(optimizer, **settings.args)


def learning_rate_schedule(settings: SchedulerConfig) -> Schedule:
    """The scheduler class `settings._target_` names, with its other arguments, stepped every `settings.interval`."""
    fix = "choose scheduler=cosine, step or constant, or give an import path such as torch.optim.lr_scheduler.LinearLR"
    scheduler = _named_class(settings._target_, LRScheduler, "scheduler._target_", "torch learning-rate scheduler", fix)
    return Schedule(partial(scheduler, **settings.args), settings.interval is ScheduleInterval.step)


@dataclass(frozen=True)
class RunPlan:
    spec: ModelSpec
    policy: PruningPolicy  # what each iteration prunes, and whether to keep what it got (policies/)
    settings: RunSettings
    analysis: AnalysisPlan | None = None
    quantize_bits: dict[str, int] | None = None  # trained quantization after the last retraining: {layer: bits}


def plan_run(config: RunConfig, processes: int = 1) -> RunPlan:
    """The plan of `config`, or a UserError naming the first bad setting and how to fix it."""
    for problem in range_problems(config):
        raise UserError(problem)
    spec = model_plan(config)
    check_phase("train", config.train, processes)
    check_phase("retrain", config.retrain, processes)
    settings = RunSettings.of(config)
    context = PolicyContext(
        settings.model_name,
        spec.layer_kinds(),
        spec.layer_sizes(),
        config.retrain.freeze,
        config.retrain.epochs,
        config.dataset.val_split > 0,
        config.seed,
    )
    if isinstance(config.task, SensitivityTask):
        if config.pruning.pattern is not None:
            raise UserError(
                "task=sensitivity prunes one layer at a time by its threshold alone: leave out pruning.pattern"
            )
        if config.dataset.val_split == 0:
            raise UserError("a sensitivity analysis evaluates on held-out training data: set dataset.val_split=N")
        if config.quantize.enabled:
            raise UserError(
                "task=sensitivity prunes without training afterwards, so it has nothing to quantize: "
                "leave out quantize=kmeans"
            )
        analysis = analysis_plan(config.task, list(spec.layers))
        return RunPlan(spec, NoPruning(config.pruning, context), settings, analysis)
    bits = quantize_plan(config.quantize, spec, processes)
    try:
        policy = patterned(build_policy(config.pruning, context), config, spec)
        return RunPlan(spec, policy, settings, quantize_bits=bits)
    except ValueError as error:
        raise UserError(str(error)) from error


def model_plan(config: RunConfig) -> ModelSpec:
    """The model's spec, its excluded layers left dense: a registered network, a torchvision classifier by name, or
    your own module (their layers discovered, their input shape the config's or the data set's)."""
    model = config.model
    if model.name == TORCHVISION:
        if model.arch is None:
            raise UserError(
                "model=torchvision needs model.arch=NAME, a torchvision classifier, e.g. model.arch=resnet18"
            )
        if model.arch not in torchvision_classifiers():
            raise UserError(
                f"model.arch={model.arch} is no torchvision classifier; choose one of torchvision.models.list_models()"
                ", e.g. model.arch=resnet18 (or mobilenet_v3_small, efficientnet_b0)"
            )
        if model.arch in MODELS:
            raise UserError(f"model.arch={model.arch} has its paper names here: use model={model.arch}")
    if model.input_shape is not None and (len(model.input_shape) != 3 or min(model.input_shape) < 1):
        raise UserError(f"model.input_shape is {model.input_shape}; give [channels, height, width], e.g. [3,32,32]")
    shape = tuple(model.input_shape) if model.input_shape is not None else native_shape(config)
    check_input_shape(config, shape)
    try:
        if model.name == CUSTOM:
            if not model._target_:
                raise ValueError(
                    "model=custom needs model._target_=IMPORT.PATH of an nn.Module, e.g. my_pkg.nets.MyNet"
                )
            spec = custom_spec(model._target_, model.args, shape)
        else:
            spec = get_model_spec(model_key(model.name, model.arch), shape if model.name == TORCHVISION else None)
        return spec.without(config.pruning.exclude) if config.pruning.exclude else spec
    except ValueError as error:
        raise UserError(str(error)) from error


def check_input_shape(config: RunConfig, shape: tuple[int, ...]) -> None:
    """Refuse a model input the data set will not deliver (its images are not resized to it)."""
    model, dataset = config.model, config.dataset
    if model.input_shape is not None and model.name not in (TORCHVISION, CUSTOM):
        raise UserError(
            f"model.input_shape applies to model=torchvision and model=custom; model={model.name} takes "
            "its own, leave it null"
        )
    delivered = native_shape(config) if not isinstance(dataset, MnistLikeDataset) else shape
    if model.name in (TORCHVISION, CUSTOM) and not isinstance(dataset, SyntheticDataset) and shape != delivered:
        size = f"dataset.size={dataset.size} makes" if isinstance(dataset, ImageFolderDataset) else "the data set has"
        raise UserError(f"model.input_shape is {list(shape)} but {size} {list(delivered)} images: set one to the other")
    if isinstance(dataset, SyntheticDataset) and dataset.name == "synthetic_imagenet" and shape != (3, 224, 224):
        raise UserError(
            f"dataset=synthetic_imagenet makes [3, 224, 224] images, not {list(shape)}: leave model.input_shape null"
        )


def native_shape(config: RunConfig) -> tuple[int, int, int]:
    """The input of a discovered model where model.input_shape leaves it open: the data set's own images (3
    channels for a torchvision classifier), generated ones at 28 x 28 (ImageNet-like: 224 x 224)."""
    dataset, channels = config.dataset, 3 if config.model.name == TORCHVISION else 1
    if isinstance(dataset, ImageFolderDataset):
        return 3, dataset.size, dataset.size
    if isinstance(dataset, SyntheticDataset) and dataset.name == "synthetic_imagenet":
        return 3, 224, 224
    return channels, 28, 28


def patterned(policy: PruningPolicy, config: RunConfig, spec: ModelSpec) -> PruningPolicy:
    """The policy with `pruning.pattern` (N:M) on the layers the semi-structured kernels take, said in the log."""
    if config.pruning.pattern is None:
        return policy
    n, m = parse_pattern(config.pruning.pattern)
    shapes = spec.layer_shapes()
    layers = [name for name, shape in shapes.items() if fits_semi_structured(shape, m)]
    others = [name for name in shapes if name not in layers]
    log.info(
        f"pruning.pattern={n}:{m} on {', '.join(layers) or 'no layer'}; the kernels do not take "
        f"{', '.join(others) or 'none'} (pruned as before)"
    )
    check_pattern_target(getattr(config.pruning, "target", None), policy.context, layers, n, m)
    return Patterned(policy, n, m, layers)


def check_pattern_target(target: float | None, context: PolicyContext, layers: list[str], n: int, m: int) -> None:
    """ValueError for a compression `target` that the N:M pattern alone exceeds: the policy, choosing within the
    patterned masks, would have nothing to prune and the run would end past its target instead of on it."""
    sizes = context.layer_sizes
    total = sum(sizes.values())
    kept = total - sum(sizes[name] // m * (m - n) for name in layers)  # a pattern layer's columns divide into groups
    if target is None or round(total / target) <= kept:
        return
    reached = total / kept
    raise ValueError(
        f"pruning.target={target:g} is below the {reached:.2f}x that pruning.pattern={n}:{m} alone reaches on "
        f"model={context.model}: raise pruning.target to at least {math.ceil(reached * 100) / 100:.2f} or drop "
        "pruning.pattern"
    )


def quantize_plan(quantize: QuantizeConfig, spec: ModelSpec, processes: int) -> dict[str, int] | None:
    """Each prunable layer's index bits for trained quantization (by layer kind), or None when it is off."""
    if not quantize.enabled:
        return None
    check_phase("quantize", quantize, processes)
    bits = {"conv": quantize.conv_bits, "fc": quantize.fc_bits}
    return {name: bits[kind] for name, kind in spec.layer_kinds().items()}


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
    for level in levels:  # each is >= 0 by its schema; a kept fraction must also keep something and at most all
        if kind is LevelKind.kept and not 0 < level <= 1:
            raise UserError(f"kept level {level} is outside (0, 1]; it is the fraction of the layer's weights kept")


def check_phase(name: str, phase: PhaseConfig, processes: int = 1) -> None:
    """Refuse a batch that the processes cannot share (each setting's own range is its schema's)."""
    if phase.batch_size % processes:
        raise UserError(
            f"{name}.batch_size is {phase.batch_size}, which {processes} processes cannot share evenly; it is the "
            f"global batch: make it a multiple of {processes}"
        )
