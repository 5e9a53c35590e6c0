"""Time one LeNet-300-100 training epoch fed by a per-sample torchvision DataLoader vs by in-memory tensors.

    python scripts/bench_data_path.py [--root ~/.cache/pruning_cli/datasets] [--batch-size 128]

Uses Fashion-MNIST (Debian's dataset-fashion-mnist is found automatically). Same model, optimizer and batch size;
only the way batches are produced differs.
"""

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

from pruning_cli.data.mnist_like import load_mnist_like
from pruning_cli.models.lenet import LeNet300


def train_epoch(batches, model: nn.Module) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    start = time.perf_counter()
    for images, labels in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("~/.cache/pruning_cli/datasets").expanduser())
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    data = load_mnist_like(
        "fashion_mnist", args.root, download=False, system_dir=Path("/usr/share/datasets/fashion-mnist")
    )
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    dataset = datasets.FashionMNIST(str(args.root), train=True, transform=to_tensor)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    torch.manual_seed(0)
    loader_seconds = train_epoch(loader, LeNet300())
    tensor_seconds = train_epoch(data.train.batches(args.batch_size, torch.Generator().manual_seed(0)), LeNet300())
    print(f"threads={torch.get_num_threads()} batch={args.batch_size} samples={len(dataset)}")
    print(f"DataLoader + ToTensor : {loader_seconds:6.2f} s/epoch")
    print(f"in-memory tensors     : {tensor_seconds:6.2f} s/epoch  ({loader_seconds / tensor_seconds:.1f}x faster)")


if __name__ == "__main__":
    main()
