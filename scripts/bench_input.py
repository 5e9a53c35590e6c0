"""The ImageNet input pipeline alone: JPEG decoding and augmentation, in images/s on one CPU core, and with
`--device cuda` the on-device path of a CUDA run (data/decode.py: nvJPEG decoding and tensor transforms on the GPU,
batches of `--batch-size`), in images/s per GPU.

    python scripts/bench_input.py [--images 256] [--rounds 3] [--size 500x375] [--train-images-per-second N ...]
                                  [--device cpu|cuda] [--batch-size 128]

It writes a folder of generated JPEGs (ImageNet's typical 500x375, quality 90) in ImageFolder layout, then times
`dataset=imagenet`'s own training and evaluation transforms (pruning_cli.data.imagenet: decode with PIL,
RandomResizedCrop(224) + flip, or Resize(256) + CenterCrop(224); to tensor, normalise) in one process with one
torch thread, which is what one DataLoader worker on one core does. Medians over `--rounds` passes.

A training run needs as many decoding cores as (images/s its model trains at) / (images/s per core). Give the
model's training speed with `--train-images-per-second` (for instance from `scripts/bench_masked_training.py` on the
GPU that will train it); the script then prints the cores it would need.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from pruning_cli.data.imagenet import eval_transform, train_transform


def write_jpegs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """`count` smooth random photos-like JPEGs (noise upsampled, so they compress like images, not like noise)."""
    generator = torch.Generator().manual_seed(0)
    paths = []
    for index in range(count):
        coarse = torch.rand(3, size[1] // 16, size[0] // 16, generator=generator)
        pixels = torch.nn.functional.interpolate(coarse[None], size=(size[1], size[0]), mode="bilinear")[0]
        pixels = (pixels * 255).clamp(0, 255).byte().permute(1, 2, 0).numpy()
        path = folder / f"class_{index % 10}" / f"{index}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def images_per_second(paths: list[Path], transform) -> float:
    """Decode and transform every file once, as a DataLoader worker does (PIL open + convert + transform)."""
    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            transform(image.convert("RGB"))
    return len(paths) / (time.perf_counter() - started)


def device_images_per_second(folder: Path, device: str, batch_size: int, train: bool) -> float:
    """The on-device path over the folder once: files read in this process, each batch decoded and transformed on
    `device` (synchronised before the clock stops)."""
    from pruning_cli.data.imagenet import load_imagenet

    root = folder.parent / "layout"  # the ImageFolder layout load_imagenet reads: train/ and val/, the same files
    if not root.exists():
        root.mkdir()
        for split in ("train", "val"):
            (root / split).symlink_to(folder, target_is_directory=True)
    data = load_imagenet(root, num_workers=0, seed=0, on_device=True).to(device)
    split = data.train if train else data.test
    started = time.perf_counter()
    count = sum(len(labels) for _, labels in split.batches(batch_size))
    if device == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="500x375", help="width x height of the generated JPEGs")
    parser.add_argument(
        "--train-images-per-second", type=float, nargs="*", default=[], metavar="N",
        help="training speeds (images/s) of the model(s) to feed: prints the decoding cores each needs",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="also time the on-device path (data/decode.py) on this device")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=128, help="batch of the on-device path")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker, one core
    width, height = (int(part) for part in args.size.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder) / "images", args.images, (width, height))
        size = sum(path.stat().st_size for path in paths) / len(paths)
        print(f"{len(paths)} JPEGs of {width}x{height}, {size / 1e3:.0f} KB each; one process, one thread")
        for name, transform in (
            ("train (RandomResizedCrop + flip)", train_transform()),
            ("eval (Resize + CenterCrop)", eval_transform()),
        ):
            speeds = [images_per_second(paths, transform) for _ in range(args.rounds)]
            per_core = statistics.median(speeds)
            print(f"{name}: {per_core:.0f} images/s per core (rounds: {', '.join(f'{s:.0f}' for s in speeds)})")
            for needed in args.train_images_per_second:
                print(f"  to feed {needed:,.0f} images/s: {needed / per_core:.0f} cores")
        for name, train in (("train", True), ("eval", False)):
            speeds = [device_images_per_second(Path(folder) / "images", args.device, args.batch_size, train)
                      for _ in range(args.rounds)]  # fmt: skip
            rounds = ", ".join(f"{speed:.0f}" for speed in speeds)
            print(f"{name}, decoded on {args.device} (data/decode.py, batch {args.batch_size}): "
                  f"{statistics.median(speeds):.0f} images/s (rounds: {rounds})")  # fmt: skip


if __name__ == "__main__":
    main()
