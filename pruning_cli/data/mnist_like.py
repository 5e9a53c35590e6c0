"""MNIST and Fashion-MNIST through torchvision's dataset classes, loaded once into tensors."""

import gzip
import shutil
from pathlib import Path

from pruning_cli.data.tensors import ImageData, TensorSplit, normalise
from pruning_cli.errors import UserError

# name -> (torchvision.datasets class name, mean, std of the training pixels in [0, 1])
MNIST_LIKE = {
    "mnist": ("MNIST", 0.1307, 0.3081),
    "fashion_mnist": ("FashionMNIST", 0.2860, 0.3530),
}


def _unpack_system_files(system_dir: Path, raw_folder: Path) -> None:
    """Copy an OS package's IDX files (gzipped or not) into torchvision's raw folder, once."""
    for source in sorted(system_dir.glob("*-ubyte*")):
        target = raw_folder / source.name.removesuffix(".gz")
        if target.exists():
            continue
        raw_folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with gzip.open(source) if source.suffix == ".gz" else source.open("rb") as reader, partial.open("wb") as out:
            shutil.copyfileobj(reader, out)
        partial.replace(target)


def load_mnist_like(name: str, root: Path, download: bool, system_dir: Path | None = None) -> ImageData:
    """Both splits of an MNIST-like data set as normalised float tensors (N, 1, 28, 28)."""
    from torchvision import datasets  # imported here: see models/imagenet.py

    class_name, mean, std = MNIST_LIKE[name]
    dataset_class = getattr(datasets, class_name)
    root = Path(root).expanduser()
    raw_folder = root / dataset_class.__name__ / "raw"
    if system_dir is not None and Path(system_dir).is_dir():
        _unpack_system_files(Path(system_dir), raw_folder)
    try:
        splits = [dataset_class(str(root), train=train, download=download) for train in (True, False)]
    except (RuntimeError, OSError) as error:
        hint = "put the four IDX files there, or set dataset.download=true with a network"
        if name == "mnist":
            hint += ", or use dataset=fashion_mnist (apt-get install dataset-fashion-mnist)"
        elif system_dir is not None:
            hint += f", or install Debian's dataset-fashion-mnist (it fills {system_dir})"
        reason = "download failed" if download else "files missing"
        raise UserError(f"{dataset_class.__name__} not found in {raw_folder} ({reason}): {hint}") from error
    train, test = (TensorSplit(normalise(split.data, mean, std), split.targets.long()) for split in splits)
    return ImageData(train, test, num_classes=len(splits[0].classes))
