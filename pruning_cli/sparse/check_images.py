"""The images `prune-export --format onnx` checks its graph on: the run's own test split where prune-export can
read it without a download or a folder walk (MNIST-like files on disk, the generated data sets, rebuilt from
run.json's `dataset` and `seed`), else fixed random inputs of the model's input shape, saying why."""

from dataclasses import dataclass
from pathlib import Path

import torch

from pruning_cli.data.mnist_like import MNIST_LIKE, load_mnist_like
from pruning_cli.data.synthetic import make_synthetic
from pruning_cli.data.tensors import fit_images
from pruning_cli.errors import UserError

SYNTHETIC_SHAPES = {"synthetic": None, "synthetic_imagenet": (3, 224, 224)}  # None: the model's input shape
DATA_SET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "synthetic": "synthetic"}


@dataclass(frozen=True)
class CheckImages:
    """The check's inputs and, for the report, what they are."""

    images: torch.Tensor
    source: str


def check_images(run_config: dict, input_shape: tuple[int, ...], count: int) -> CheckImages:
    """Up to `count` of the run's test images, shaped as the model takes them (as the run fitted them); `count`
    fixed random inputs when they cannot be read here, so the check still runs on every model."""
    dataset = run_config.get("dataset") or {}
    name = dataset.get("name")
    try:
        images = _test_images(dataset, input_shape, int(run_config.get("seed") or 0))
    except UserError:  # MNIST-like files not on this machine: prune-export never downloads
        return _random(input_shape, count, f"the run's {name} test files are not on this machine")
    except KeyError as error:  # a hand-written run.json
        return _random(input_shape, count, f"run.json's dataset has no {error}")
    if images is None:
        why = "run.json names no data set" if name is None else f"prune-export does not read {name} images"
        return _random(input_shape, count, why)
    if tuple(images.shape[1:]) != tuple(input_shape):
        images = fit_images(images[:count], input_shape)
    label = DATA_SET_NAMES.get(name, str(name).replace("_", " "))
    return CheckImages(images[:count], f"{min(count, len(images)):,} {label} test images")


def _test_images(dataset: dict, input_shape: tuple[int, ...], seed: int) -> torch.Tensor | None:
    """The run's whole test split as the run loaded it (normalised), or None for a kind read from folders."""
    name = dataset.get("name")
    if name in MNIST_LIKE:
        system_dir = Path(dataset["system_dir"]) if dataset.get("system_dir") else None
        return load_mnist_like(name, Path(dataset["root"]), download=False, system_dir=system_dir).test.images
    if name in SYNTHETIC_SHAPES:
        shape = SYNTHETIC_SHAPES[name] or tuple(input_shape)
        sizes = (dataset["num_train"], dataset["num_test"], dataset["num_classes"])
        return make_synthetic(*sizes, shape, seed).test.images  # same arguments, same tensors as the run's
    return None


def _random(input_shape: tuple[int, ...], count: int, why: str) -> CheckImages:
    """`count` inputs drawn from N(0, 1) with a fixed seed, shaped as normalised images: the same on every call."""
    images = torch.randn(count, *input_shape, generator=torch.Generator().manual_seed(0))
    return CheckImages(images, f"{count:,} fixed random inputs ({why})")
