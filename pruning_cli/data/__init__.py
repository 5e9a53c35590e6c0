"""Data sets as in-memory tensors: MNIST-like files through torchvision, or generated data; image folders through
a DataLoader. Imports the schemas, errors and the processes (`parallel`), never the training or the run."""

import logging
from pathlib import Path

from pruning_cli.config.schema import DatasetConfig, ImageFolderDataset, MnistLikeDataset, SyntheticDataset
from pruning_cli.data.image_check import FolderCheck
from pruning_cli.data.imagenet import load_imagenet
from pruning_cli.data.mnist_like import MNIST_LIKE, load_mnist_like
from pruning_cli.data.synthetic import make_synthetic
from pruning_cli.data.tensors import ImageData, TensorSplit, fit_images, hold_out_validation
from pruning_cli.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["ImageData", "TensorSplit", "load_data"]

IMAGENET_SHAPE = (3, 224, 224)


def load_data(
    config: DatasetConfig, input_shape: tuple[int, int, int], seed: int, decode_on_device: bool = False
) -> ImageData:
    """The data set `config` names, shaped for a model that takes `input_shape` images, with its validation split;
    image folders decoded on the run's device when `decode_on_device` (a GPU: data/decode.py)."""
    if isinstance(config, SyntheticDataset):
        shape = IMAGENET_SHAPE if config.name == "synthetic_imagenet" else input_shape
        data = make_synthetic(config.num_train, config.num_test, config.num_classes, shape, seed)
    elif isinstance(config, ImageFolderDataset):
        what = "ImageNet" if config.name == "imagenet" else "image"
        if not len(config.mean) == len(config.std) == input_shape[0]:
            raise UserError(
                f"dataset.mean and dataset.std need one value per channel of the model's input "
                f"({input_shape[0]}), not {len(config.mean)} and {len(config.std)}"
            )
        check = FolderCheck(config.check_images, config.skip_bad_images)
        data = load_imagenet(
            Path(config.root),
            config.num_workers,
            seed,
            config.size,
            config.mean,
            config.std,
            what,
            decode_on_device,
            check,
        )
    elif isinstance(config, MnistLikeDataset) and config.name in MNIST_LIKE:
        system_dir = Path(config.system_dir) if config.system_dir else None
        data = load_mnist_like(config.name, Path(config.root), config.download, system_dir)
        data = fitted(data, input_shape)
    else:
        raise ValueError(f"unknown data set {config.name!r}")  # Hydra's choice list rejects this before we get here
    if not config.val_split + config.confirm_split < len(data.train):
        raise UserError(
            f"dataset.val_split is {config.val_split} and dataset.confirm_split {config.confirm_split}; together "
            f"they must leave training data ({config.name} has {len(data.train)} training images)"
        )
    return hold_out_validation(data, config.val_split, config.confirm_split)


def fitted(data: ImageData, input_shape: tuple[int, int, int]) -> ImageData:
    """The data set's images as the model takes them (model.input_shape), saying so when that changes them."""
    shape = tuple(data.train.images.shape[1:])
    if shape == tuple(input_shape):
        return data
    resized, repeated = shape[1:] != tuple(input_shape[1:]), shape[0] != input_shape[0]
    changes = ["resized" if resized else "", "channel repeated" if repeated else ""]
    log.info(
        f"images adapted to the model's input {list(input_shape)} (model.input_shape): {list(shape)} "
        f"{' and '.join(change for change in changes if change)}"
    )
    splits = (TensorSplit(fit_images(split.images, input_shape), split.labels) for split in (data.train, data.test))
    return ImageData(*splits, num_classes=data.num_classes)


def decoding(data: ImageData) -> str:
    """Where the training images are decoded (run.json's runtime.decode)."""
    from pruning_cli.data.decode import DecodedSplit
    from pruning_cli.data.loader import LoaderSplit

    if isinstance(data.train, DecodedSplit):
        where = data.train.device.type
        return f"on {where} (JPEG batches by torchvision.io.decode_jpeg, other files by PIL; transforms on tensors)"
    return "PIL in DataLoader workers" if isinstance(data.train, LoaderSplit) else "in memory"
