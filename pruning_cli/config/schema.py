"""Typed schemas of the run configuration, and every default of it, stated once.

Hydra validates every YAML file and override against these dataclasses (a misspelt key, a wrong type, or a key of
another data set kind or task fails at compose time), every number is checked against the range its field states
(`ranges.ranged`; run/plan.py refuses one outside it before any work), and the CLI hands the core instances of them:
the core never sees an omegaconf object. The YAML files of `configs/` only choose between them and pin recipes.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pruning_cli.config.ranges import ANY, AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Range, ranged

MISSING = "???"  # omegaconf's marker for a value the composed config must set

DATA_ROOT = "${oc.env:PRUNING_CLI_DATA,'~/.cache/pruning_cli/datasets'}"
IMAGENET_ROOT = "${oc.env:PRUNING_CLI_IMAGENET,'~/.cache/pruning_cli/datasets/imagenet'}"


class Regularization(Enum):
    l1 = "l1"
    l2 = "l2"


class StdSource(Enum):
    """Which std the threshold multiplies: of the surviving weights at each iteration, or of the dense weights."""

    surviving = "surviving"
    dense = "dense"


class Freeze(Enum):
    """Layers held fixed while retraining: the paper retrains fc with conv frozen after pruning fc, and vice versa."""

    none = "none"
    conv = "conv"
    fc = "fc"


class Precision(Enum):
    """Arithmetic of the training forward/backward (weights, optimizer and evaluation stay fp32): `auto` lets the
    device policy choose (bf16 where it measured faster), `fp32` and `bf16` force one (bf16 autocast needs CUDA or
    a CPU with AMX; elsewhere it trains in fp32)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class LevelKind(Enum):
    """What the levels of a sensitivity analysis are: sensitivities (threshold = level x std) or kept fractions."""

    sensitivity = "sensitivity"
    kept = "kept"


@dataclass
class ModelConfig:
    name: str = MISSING
    # Pretrained torchvision weights (e.g. IMAGENET1K_V1) for torchvision models; the data set needs 1000 classes.
    weights: str | None = None
    # model=torchvision: the classifier torchvision builds (resnet18, mobilenet_v3_small, efficientnet_b0, ...).
    arch: str | None = None
    # Channels, height, width the model takes (model=torchvision; null: 3 channels at the data set's own size,
    # 224 x 224 for generated ImageNet-like data; model=custom: the data set's). MNIST-like images are adapted to
    # it: grayscale repeated, resized to its height and width.
    input_shape: list[int] | None = ranged(AT_LEAST_ONE, None)
    # model=custom: your own nn.Module, built by hydra.utils.instantiate from its import path and `args`.
    _target_: str | None = None
    args: Any = None  # keyword arguments, e.g. model.args={hidden:64}


@dataclass
class DatasetConfig:
    """What every data set kind has. The `dataset` group's choices each use one of the kinds below."""

    name: str = MISSING
    # Training images held out as a validation split (fixed seed); the choices made on data are made there.
    val_split: int = ranged(NON_NEGATIVE, 0)
    # Training images held out after the validation split as a confirmation split: no choice reads it; the run
    # reports every model on it beside the validation and test columns (does a budget chosen on validation hold?).
    confirm_split: int = ranged(NON_NEGATIVE, 0)
    eval_batch_size: int = ranged(AT_LEAST_ONE, 1000)


@dataclass
class MnistLikeDataset(DatasetConfig):
    """MNIST and Fashion-MNIST: four IDX files under `<root>/<torchvision class>/raw`."""

    root: str = DATA_ROOT
    download: bool = True
    # Where an operating-system package keeps the gzipped IDX files (Debian: /usr/share/datasets/fashion-mnist).
    system_dir: str | None = None


@dataclass
class SyntheticDataset(DatasetConfig):
    """Generated class prototypes plus noise: deterministic, no files (smoke runs and tests)."""

    num_train: int = ranged(AT_LEAST_ONE, 2048)
    num_test: int = ranged(AT_LEAST_ONE, 512)
    num_classes: int = ranged(Range(2), 10)


@dataclass
class ImageFolderDataset(DatasetConfig):
    """Images in class folders, `<root>/{train,val}/<class>/*` (ImageNet, or your own), decoded by DataLoader
    worker processes: training images randomly resized, cropped to `size` and flipped; evaluation images resized
    to 256/224 of `size` and centre-cropped; both normalised with `mean` and `std` per channel."""

    root: str = IMAGENET_ROOT
    num_workers: int = ranged(NON_NEGATIVE, 8)
    eval_batch_size: int = ranged(AT_LEAST_ONE, 250)
    size: int = ranged(AT_LEAST_ONE, 224)  # height and width the model sees
    mean: list[float] = ranged(ANY, default_factory=lambda: [0.485, 0.456, 0.406])  # ImageNet's, per RGB channel
    std: list[float] = ranged(POSITIVE, default_factory=lambda: [0.229, 0.224, 0.225])
    # Read every file's header before training (threads, a progress bar from 10,000 files), so that a file that
    # cannot be decoded is named at once, not one epoch in; false leaves it to the loader (a folder too large).
    check_images: bool = True
    # Leave out the files that fail that check (counted in run.json and the log) instead of stopping at the first.
    skip_bad_images: bool = False


@dataclass
class PhaseConfig:
    """One training phase: dense training or retraining after a pruning step."""

    epochs: int = ranged(NON_NEGATIVE, 10)
    batch_size: int = ranged(AT_LEAST_ONE, 128)
    lr: float = ranged(POSITIVE, 0.05)
    momentum: float = ranged(Range(0, 1, high_open=True), 0.9)
    weight_decay: float = ranged(NON_NEGATIVE, 5e-4)
    regularization: Regularization = Regularization.l2
    # At most this many batches per epoch (null: the whole training split), for smoke runs at ImageNet scale.
    max_batches: int | None = ranged(AT_LEAST_ONE, None)
    # Arithmetic of the forward and backward passes; auto: bf16 autocast where run/runtime.py measured it faster.
    precision: Precision = Precision.auto


@dataclass
class TrainConfig(PhaseConfig):
    """Phase 1, the dense model."""

    # A trained model (a state_dict, or a checkpoint of this tool): phase 1 loads it instead of training. Exact
    # zeros in its prunable weights count as already pruned (continuing from a pruned model).
    checkpoint: str | None = None


@dataclass
class DistillConfig:
    """Knowledge distillation while retraining (Hinton et al. 2015), the dense model as teacher: the loss is
    (1 - weight) CE(labels) + weight T^2 KL(softmax(teacher / T) || softmax(student / T)), T the temperature."""

    weight: float = ranged(FRACTION, 0.0)  # 0: off
    temperature: float = ranged(POSITIVE, 4.0)


@dataclass
class RetrainConfig(PhaseConfig):
    """Phase 3, after each pruning step; the paper retrains LeNets at 1/10 of the dense learning rate."""

    epochs: int = ranged(NON_NEGATIVE, 4)
    lr: float = ranged(POSITIVE, 0.005)
    # Layers that get no update while retraining (not in the optimizer, so no weight decay either).
    freeze: Freeze = Freeze.none
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class QuantizeConfig(PhaseConfig):
    """Phase 4 (Deep Compression's trained quantization), after the last retraining: each prunable layer's surviving
    weights share 2^bits - 1 values (k-means, linear initialisation; index 0 stays the zero of filler entries), then
    the shared values are fine-tuned, each by the summed gradient of its weights, with the masks fixed."""

    enabled: bool = False  # quantize=kmeans turns it on
    conv_bits: int = ranged(Range(1, 8), 8)  # Deep Compression: 8 bits (255 shared values) for conv layers
    fc_bits: int = ranged(Range(1, 8), 5)  # and 5 bits (31 shared values) for fc layers
    kmeans_iterations: int = ranged(AT_LEAST_ONE, 30)
    epochs: int = ranged(NON_NEGATIVE, 2)
    # A shared value's gradient sums those of all its weights (hundreds to thousands of them in a LeNet fc layer),
    # so its step is that many weights' steps: the learning rate is correspondingly small. Chosen on the validation
    # split (docs/results.md, "Trained quantization").
    lr: float = ranged(POSITIVE, 1e-4)
    weight_decay: float = ranged(NON_NEGATIVE, 0.0)


@dataclass
class PruningConfig:
    """Phase 2: the `pruning` group's choices are the policies of pruning_cli/policies, each with its own schema
    (a subclass of this one, kept in the policy's module and registered from its registry)."""

    name: str = MISSING
    # Prunable layers left dense, by their names in layers.csv (e.g. [conv1,fc]: the first convolution and the
    # classifier, a common choice for torchvision models).
    exclude: list[str] = field(default_factory=list)
    # N:M semi-structured sparsity on top of the policy's masks (e.g. 2:4, NVIDIA's sparse tensor cores): at most N of
    # every M weights along the input of each layer whose shape the kernels take; the other layers as before.
    pattern: str | None = None


@dataclass
class TaskConfig:
    """What `prune-run` does with the model: the `task` group's choices each use one of the kinds below."""

    name: str = MISSING


@dataclass
class PruneTask(TaskConfig):
    """Train, then prune -> retrain `pruning.iterations` times (the paper's three phases)."""

    name: str = "prune"


@dataclass
class SensitivityTask(TaskConfig):
    """Layer sensitivity (paper Fig. 6): prune one layer at a time at each level, evaluate on the validation split."""

    name: str = "sensitivity"
    layer: str | None = None  # null: every prunable layer, in one process
    # A non-null `level` replaces `levels` by that one value (one point per job in a Hydra multirun).
    level: float | None = ranged(NON_NEGATIVE, None)
    levels: list[float] = ranged(NON_NEGATIVE, default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    level_kind: LevelKind = LevelKind.sensitivity


@dataclass
class DeviceConfig:
    name: str = "auto"


@dataclass
class OptimizerConfig:
    """The optimizer of every training phase (`optimizer=sgd`, the paper's, or `optimizer=adamw`): a torch.optim
    class by import path, built with each phase's `lr` and `weight_decay` (SGD's coupled L2, AdamW's decoupled decay)
    and, for SGD, its `momentum`. A pruned weight and its optimizer state stay exactly zero whatever it is."""

    name: str = "sgd"
    _target_: str = "torch.optim.SGD"
    # Its other keyword arguments (e.g. AdamW's betas and eps).
    args: dict[str, Any] = field(default_factory=dict)


class ScheduleInterval(Enum):
    """When a phase's learning-rate schedule steps."""

    step = "step"  # after every optimizer step
    epoch = "epoch"  # after every epoch


@dataclass
class SchedulerConfig:
    """The learning-rate schedule of every training phase (`scheduler=cosine`, the default, `step` or `constant`):
    a torch.optim.lr_scheduler class by import path, built on each phase's optimizer and stepped every `interval`.
    Its length argument (`T_max`, `total_iters`), unless `args` gives it, is the phase's length in intervals."""

    name: str = "cosine"
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    interval: ScheduleInterval = ScheduleInterval.step
    # Its other keyword arguments (e.g. StepLR's step_size and gamma, counted in intervals).
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    """Where a run's rows go besides its CSVs (`logger=csv`, the default: nowhere else; `tensorboard`, `mlflow`).
    The CSVs are always written; a tracker receives each of their rows with its step."""

    name: str = "csv"


@dataclass
class TensorBoardLogger(LoggerConfig):
    # The event files' folder, relative to the run directory (`tensorboard logdir` the run or sweep directory)
    save_dir: str = "tensorboard"
    # How often the event files are flushed to disk, in seconds (torch's SummaryWriter default)
    flush_secs: int = ranged(AT_LEAST_ONE, 120)


@dataclass
class MlflowLogger(LoggerConfig):
    # The tracking store; null: a local file store, mlruns/ in the sweep directory (a multirun) or the run directory
    tracking_uri: str | None = None
    # The MLflow experiment every job of a run or sweep logs into, one MLflow run per job
    experiment_name: str = "prune-run"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = ranged(ANY, 0)
    # Continue the run found in the output directory (checkpoints/last.pt) instead of starting it over.
    resume: bool = True
    # Deterministic kernels (matters on GPU; CPU runs are repeatable without it).
    deterministic: bool = False
    # torch.compile the training forward/backward (evaluation stays eager so that its hooks see every layer).
    compile: bool = False


# The schemas each config group's choices are checked against: {group: {schema name: dataclass}}. A choice's YAML
# lists its schema first in its defaults (`defaults: [mnist_like, _self_]`). The `pruning` group's come from the
# policy registry (pruning_cli/policies/registry.py).
GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {
        "mnist_like": MnistLikeDataset,
        "synthetic_data": SyntheticDataset,
        "image_folder_data": ImageFolderDataset,
    },
    "task": {"prune_task": PruneTask, "sensitivity_task": SensitivityTask},
    "logger": {"csv_logger": LoggerConfig, "tensorboard_logger": TensorBoardLogger, "mlflow_logger": MlflowLogger},
}
