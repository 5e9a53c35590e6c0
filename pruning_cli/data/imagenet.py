"""Images from a local folder (ImageFolder layout), with the standard training and evaluation transforms: ImageNet
(which torchvision cannot download any more) or a user's own, `train/<class>/*` and `val/<class>/*`.
"""

import copy
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pruning_cli.data.image_check import (
    EVERY_FILE,
    FolderCheck,
    check_class_folders,
    check_same_classes,
    drop_unreadable,
)
from pruning_cli.data.loader import LoaderSplit
from pruning_cli.data.tensors import ImageData
from pruning_cli.errors import UserError

if TYPE_CHECKING:
    from torchvision import datasets, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def train_transform(size: int = 224, mean=MEAN, std=STD) -> "transforms.Compose":
    from torchvision import transforms  # imported here: see models/imagenet.py

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def eval_transform(size: int = 224, mean=MEAN, std=STD) -> "transforms.Compose":
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(size * 256 // 224),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def _image_folder(folder: Path, transform: "transforms.Compose", what: str) -> "datasets.ImageFolder":
    """The ImageFolder at `folder`, or a one-line error naming the folder when it is missing or holds no images."""
    hint = "dataset.root must hold train/<class>/*.JPEG and val/<class>/*.JPEG"
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist; {hint}")
    if not any(entry.is_dir() for entry in folder.iterdir()):
        raise UserError(f"{what} folder {folder} has no class folders with images; {hint}")
    check_class_folders(folder, what)
    try:
        from torchvision import datasets

        return datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as error:
        raise UserError(f"{what} folder {folder} has no class folders with images; {hint}") from error


def load_imagenet(
    root: Path,
    num_workers: int,
    seed: int,
    size: int = 224,
    mean=MEAN,
    std=STD,
    what: str = "ImageNet",
    on_device: bool = False,
    check: FolderCheck = EVERY_FILE,
) -> ImageData:
    """Both splits as DataLoader-backed splits; the class list comes from the training folder, every file checked
    first as `check` says (data/image_check.py). `on_device`: the workers read the files and the run's device
    decodes and augments them (data/decode.py)."""
    root = Path(root).expanduser()
    transforms = (None, None) if on_device else (train_transform(size, mean, std), eval_transform(size, mean, std))
    train = _image_folder(root / "train", transforms[0], what)
    val = _image_folder(root / "val", transforms[1], what)
    check_same_classes(root / "train", root / "val", what)
    skipped = drop_unreadable(train, check) + drop_unreadable(val, check)
    if on_device:
        return replace(_decoded_on_device(train, val, num_workers, seed, size, mean, std), skipped_images=skipped)
    from torchvision.datasets.vision import StandardTransform

    held_out = copy.copy(train)  # the same files (no second scan of the folder) with the evaluation transform
    held_out.transform, held_out.transforms = transforms[1], StandardTransform(transforms[1])
    training = LoaderSplit(train, num_workers, seed=seed, held_out_dataset=held_out)
    return ImageData(training, LoaderSplit(val, num_workers, seed=seed), len(train.classes), skipped_images=skipped)


def _decoded_on_device(train, val, num_workers: int, seed: int, size: int, mean, std) -> ImageData:
    """Both folders read as encoded files by the workers, decoded and augmented on the run's device."""
    from pruning_cli.data.decode import DecodedSplit, EncodedImages, collate_encoded

    splits = [
        DecodedSplit(
            LoaderSplit(EncodedImages(folder), num_workers, seed=seed, collate=collate_encoded),
            training,
            size,
            mean,
            std,
        )
        for folder, training in ((train, True), (val, False))
    ]
    return ImageData(*splits, len(train.classes))
