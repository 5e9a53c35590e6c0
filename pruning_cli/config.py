"""Typed schemas of the run configuration.

Hydra validates every YAML file and override against these dataclasses (a misspelt key or a wrong type fails
at compose time), and the CLI hands the core instances of them: the core never sees an omegaconf object.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING


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
    """Arithmetic of the training forward/backward: fp32, or bf16 autocast (CUDA only; weights stay fp32)."""

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


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "data"
    download: bool = False
    # Where an operating-system package keeps the gzipped IDX files (Debian: /usr/share/datasets/fashion-mnist).
    system_dir: str | None = None
    # Sizes of the generated data set (dataset=synthetic only).
    num_train: int = 2048
    num_test: int = 512
    num_classes: int = 10
    eval_batch_size: int = 1000
    # Training images held out as a validation split (fixed seed); sensitivity analysis evaluates there.
    val_split: int = 0
    # Image-folder data sets (dataset=imagenet): DataLoader worker processes decoding JPEGs.
    num_workers: int = 8


@dataclass
class PhaseConfig:
    """One training phase: dense training or retraining after a pruning step."""

    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    regularization: Regularization = Regularization.l2
    # Cosine decay of the learning rate to zero over the phase, per step; false keeps it constant.
    cosine: bool = True
    # At most this many batches per epoch (null: the whole training split), for smoke runs at ImageNet scale.
    max_batches: int | None = None
    # bf16 autocast for the forward and backward passes on CUDA (the CPU always trains in fp32).
    precision: Precision = Precision.fp32


@dataclass
class RetrainConfig(PhaseConfig):
    # Layers that get no update while retraining (not in the optimizer, so no weight decay either).
    freeze: Freeze = Freeze.none


@dataclass
class TrainConfig(PhaseConfig):
    # A trained dense model (a state_dict, or a checkpoint of this tool): phase 1 loads it instead of training.
    checkpoint: str | None = None


@dataclass
class PruningConfig:
    name: str = "iterative"
    iterations: int = 1
    # Threshold = sensitivity x std for every prunable layer; null leaves unnamed layers dense.
    sensitivity: float | None = 1.0
    # Per-layer overrides, {layer: sensitivity}. Untyped and null by default so that `pruning.kept={fc1:0.08}`
    # replaces the node (Hydra would merge a dict into a typed dict node and refuse its new keys);
    # resolve_targets checks names and values instead.
    layer_sensitivity: Any = None
    # Final fraction of each layer's weights kept, {layer: fraction} (the paper's per-layer %); wins over sensitivities.
    kept: Any = None
    std: StdSource = StdSource.surviving
    # The paper's alternation: odd iterations prune the fc layers and retrain them with conv frozen, even
    # iterations prune conv and retrain it with fc frozen (pruning/schedule.py).
    alternate: bool = False
    # pruning=sensitivity: the layer to analyse (null: every prunable layer, in one process) and the levels.
    # A non-null `sensitivity` replaces `levels` by that one value (one point per job in a Hydra multirun).
    layer: str | None = None
    levels: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    level_kind: LevelKind = LevelKind.sensitivity


@dataclass
class DeviceConfig:
    name: str = "auto"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    seed: int = 0
    # Continue the run found in the output directory (checkpoints/last.pt) instead of starting it over.
    resume: bool = True
    # Deterministic kernels (matters on GPU; CPU runs are repeatable without it).
    deterministic: bool = False
    # torch.compile the training forward/backward (evaluation stays eager so that its hooks see every layer).
    compile: bool = False
