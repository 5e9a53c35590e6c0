"""Training throughput (images/s) of AlexNet and VGG-16, dense vs masked (pruned weights held at zero).

    python scripts/bench_masked_training.py [--models alexnet vgg16] [--batch-size 128] [--precision fp32|bf16]
                                            [--steps 20] [--warmup 5] [--rounds 3] [--device auto|cpu|cuda]

The masked run does what retraining does each step (MaskedWeights: the weights masked after the SGD step, one
fused call) at the paper's per-layer kept fractions; the dense run is the same SGD step without the mask. The
ratio is the cost of keeping the zeros exact; `mask ms` times the masking call alone, and `of a step` is that time
over a dense step's (the cost without the run-to-run noise). Random 224x224 inputs on the device (no data
loading), random-init torchvision models (nothing downloaded), 1000 classes. On CUDA the model is channels_last
with cuDNN benchmarking, as in prune-run; bf16 is autocast on CUDA only.
"""

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from pruning_cli.models import get_model_spec
from pruning_cli.paper import PAPER_KEPT
from pruning_cli.pruning.masks import top_fraction_mask
from pruning_cli.training.loop import MaskedWeights

PAPER_NETWORKS = ("alexnet", "vgg16")


def images_per_second(model, masked, images, labels, steps: int, warmup: int, bf16: bool) -> float:
    """Mean training throughput over `steps` SGD steps after `warmup` untimed ones."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    cuda = images.device.type == "cuda"
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and cuda):
            loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
        if masked is not None:
            masked.mask_weights()
    if cuda:
        torch.cuda.synchronize()
    return steps * len(images) / (time.perf_counter() - start)


def bench(name: str, device: torch.device, batch_size: int, steps: int, warmup: int, bf16: bool, rounds: int) -> None:
    """Dense and masked training of the same model, alternated `rounds` times (the median of each is printed), so
    that a slow patch of the machine does not land on one side only."""
    spec = get_model_spec(name)
    model = spec.build(1000).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, *spec.input_shape, generator=generator).to(device)
    labels = torch.randint(1000, (batch_size,), generator=generator).to(device)
    if device.type == "cuda":
        images = images.to(memory_format=torch.channels_last)
    layers = spec.prunable(model)
    masks = [top_fraction_mask(layers[layer].weight, percent / 100)[0] for layer, percent in PAPER_KEPT[name].items()]
    masked = MaskedWeights([layers[layer].weight for layer in PAPER_KEPT[name]], masks)
    dense_model = copy.deepcopy(model)  # the dense side keeps all its weights
    masked.mask_weights()
    dense, sparse = [], []
    for _ in range(rounds):
        dense.append(images_per_second(dense_model, None, images, labels, steps, warmup, bf16))
        sparse.append(images_per_second(model, masked, images, labels, steps, warmup, bf16))
    dense_rate, sparse_rate = statistics.median(dense), statistics.median(sparse)
    # The masks' own cost, timed alone: on a noisy CPU the two throughputs above wander by more than it.
    mask_ms = 1000 * mask_seconds(masked, device)
    dense_step_ms = 1000 * batch_size / dense_rate
    print(
        f"{name:8} {dense_rate:12.1f} {sparse_rate:12.1f} {sparse_rate / dense_rate:8.3f} {mask_ms:9.1f} "
        f"{mask_ms / dense_step_ms:11.1%}",
        flush=True,
    )


def mask_seconds(masked: MaskedWeights, device: torch.device, repeats: int = 10) -> float:
    """Median time of one step's masking of the weights."""
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        masked.mask_weights()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PAPER_NETWORKS), choices=PAPER_NETWORKS)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="dense/masked alternations; medians are printed")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args()
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bf16 = args.precision == "bf16"
    note = "" if not bf16 or device.type == "cuda" else " (bf16 is CUDA only: fp32 on this device)"
    print(
        f"device {device}, batch {args.batch_size}, {args.precision}{note}, {args.steps} timed steps, "
        f"median of {args.rounds} alternated rounds"
    )
    print(f"{'model':8} {'dense img/s':>12} {'masked img/s':>12} {'ratio':>8} {'mask ms':>9} {'of a step':>11}")
    for name in args.models:
        bench(name, device, args.batch_size, args.steps, args.warmup, bf16, args.rounds)


if __name__ == "__main__":
    main()
