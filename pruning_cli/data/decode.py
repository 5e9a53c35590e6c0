"""Image folders decoded on the GPU: DataLoader workers only read each file's bytes, nvJPEG decodes the batch on the
device (torchvision.io.decode_jpeg), and the crop, resize, flip and normalisation run there on tensors, with the
CPU path's semantics (transforms.v2 on tensors instead of PIL). On CUDA a CPU core decodes about 500 images/s
(scripts/bench_input.py), far below what one GPU trains on; this path takes the decoding off the CPU.

The same code runs on the CPU (decode_jpeg there, decode_image for other formats), which is how it is tested.
torchvision 0.29 marks its decoders deprecated in favour of TorchCodec: the successor to move to once it is pinned.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import Dataset

from pruning_cli.data.loader import LoaderSplit
from pruning_cli.parallel.shard import SINGLE_PROCESS, Shard

if TYPE_CHECKING:
    from torchvision import datasets


class EncodedImages(Dataset):
    """An ImageFolder's files as (encoded bytes, label): the workers read, they do not decode. Plain bytes, not
    tensors: a batch of many small tensors would cross from the workers as as many shared-memory descriptors."""

    def __init__(self, folder: "datasets.ImageFolder") -> None:
        self.samples = folder.samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        path, label = self.samples[index]
        return Path(path).read_bytes(), label


def collate_encoded(batch: list[tuple[bytes, int]]) -> tuple[list[bytes], Tensor]:
    """A batch of files of different lengths: their bytes, and the labels."""
    return [data for data, _ in batch], torch.tensor([label for _, label in batch])


class DecodedSplit:
    """One split of an image folder, decoded and augmented on `device` (the TensorSplit interface)."""

    def __init__(
        self, files: LoaderSplit, train: bool, size: int, mean: list[float], std: list[float], device="cpu"
    ) -> None:
        self.files, self.train, self.size, self.mean, self.std = files, train, size, mean, std
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.files)

    def num_batches(self, batch_size: int, shard: Shard = SINGLE_PROCESS) -> int:
        return self.files.num_batches(batch_size, shard)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, shard: Shard = SINGLE_PROCESS
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of the file loader (its order, its sharding), decoded and transformed on the device."""
        for encoded, labels in self.files.batches(batch_size, generator, shard):
            yield self.decode(encoded), labels.to(self.device)

    def decode(self, files: list[bytes]) -> Tensor:
        """Normalised float images (N, 3, size, size) on the device from a batch of encoded files."""
        images = self._decoded(files)
        transform = self._transform()
        batch = torch.stack([transform(image) for image in images]).float() / 255
        mean, std = (torch.tensor(values, device=self.device).view(1, -1, 1, 1) for values in (self.mean, self.std))
        return (batch - mean) / std

    def _decoded(self, files: list[bytes]) -> list[Tensor]:
        """uint8 (3, H, W) images on the device: a batch of JPEGs by decode_jpeg there; any other file, and a JPEG
        the device's decoder refuses (nvJPEG and CMYK), by PIL as the CPU path reads it."""
        from torchvision.io import ImageReadMode, decode_jpeg

        jpegs = [index for index, data in enumerate(files) if data[:2] == b"\xff\xd8"]
        images: list[Tensor | None] = [None] * len(files)
        if jpegs:
            try:
                encoded = [torch.frombuffer(bytearray(files[index]), dtype=torch.uint8) for index in jpegs]
                decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
                for index, image in zip(jpegs, decoded, strict=True):
                    images[index] = image
            except RuntimeError:  # one file the decoder cannot take: the whole batch goes through PIL
                pass
        return [
            image if image is not None else _pil(data).to(self.device)
            for image, data in zip(images, files, strict=True)
        ]

    def _transform(self):
        from torchvision.transforms import v2

        if self.train:
            return v2.Compose([v2.RandomResizedCrop(self.size, antialias=True), v2.RandomHorizontalFlip()])
        return v2.Compose([v2.Resize(self.size * 256 // 224, antialias=True), v2.CenterCrop(self.size)])

    def to(self, device: torch.device | str) -> "DecodedSplit":
        return DecodedSplit(self.files, self.train, self.size, self.mean, self.std, device)

    def subset(self, index: Tensor, held_out: bool = False) -> "DecodedSplit":
        """The files at `index`; `held_out`: transformed as evaluation does (a validation split: no augmentation)."""
        training = self.train and not held_out
        return DecodedSplit(self.files.subset(index), training, self.size, self.mean, self.std, self.device)


def _pil(data: bytes) -> Tensor:
    """One file decoded as the CPU path does (PIL, converted to RGB), as a uint8 (3, H, W) tensor."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
