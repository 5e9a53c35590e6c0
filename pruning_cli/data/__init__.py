"""Data sets as in-memory tensors: MNIST-like files through torchvision, or generated data."""

from pathlib import Path

from pruning_cli.config import DatasetConfig
from pruning_cli.data.mnist_like import MNIST_LIKE, load_mnist_like
from pruning_cli.data.synthetic import make_synthetic
from pruning_cli.data.tensors import ImageData, TensorSplit

__all__ = ["ImageData", "TensorSplit", "load_data"]


def load_data(config: DatasetConfig, input_shape: tuple[int, int, int], seed: int) -> ImageData:
    """The data set `config` names, shaped for a model that takes `input_shape` images."""
    if config.name == "synthetic":
        return make_synthetic(config.num_train, config.num_test, config.num_classes, input_shape, seed)
    if config.name in MNIST_LIKE:
        system_dir = Path(config.system_dir) if config.system_dir else None
        return load_mnist_like(config.name, Path(config.root), config.download, system_dir)
    raise ValueError(f"unknown data set {config.name!r}")  # Hydra's choice list rejects this before we get here
