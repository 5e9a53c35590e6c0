"""The ImageNet input pipeline alone: JPEG decoding and augmentation, in images/s on one CPU core.

    python scripts/bench_input.py [--images 256] [--rounds 3] [--size 500x375] [--train-images-per-second N ...]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="500x375", help="width x height of the generated JPEGs")
    parser.add_argument(
        "--train-images-per-second", type=float, nargs="*", default=[], metavar="N",
        help="training speeds (images/s) of the model(s) to feed: prints the decoding cores each needs",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker, one core
    width, height = (int(part) for part in args.size.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(Path(folder), args.images, (width, height))
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


if __name__ == "__main__":
    main()
