"""Writes small MNIST-format IDX files, so tests exercise the real loading code without a download."""

import gzip
import struct
from pathlib import Path

import torch

FILE_NAMES = {
    (True, "images"): "train-images-idx3-ubyte",
    (True, "labels"): "train-labels-idx1-ubyte",
    (False, "images"): "t10k-images-idx3-ubyte",
    (False, "labels"): "t10k-labels-idx1-ubyte",
}


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """IDX encoding of a uint8 tensor: magic (0, 0, type 0x08, ndim), big-endian sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, tensor.dim()) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    return header + tensor.numpy().tobytes()


def write_mnist_like(folder: Path, sizes: dict[bool, int], compress: bool = False) -> dict[bool, tuple]:
    """Random 28x28 images and labels in `folder`; returns {train: (images, labels)} as written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    generator = torch.Generator().manual_seed(1)
    for train, size in sizes.items():
        images = torch.randint(0, 256, (size, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (size,), dtype=torch.uint8, generator=generator)
        for kind, tensor in (("images", images), ("labels", labels)):
            name = FILE_NAMES[(train, kind)]
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(tensor)))
            else:
                (folder / name).write_bytes(idx_bytes(tensor))
        written[train] = (images, labels)
    return written
