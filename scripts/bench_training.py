"""Training throughput: the tool's own training step against a plain PyTorch loop, on the same model, data and device.

    python scripts/bench_training.py [--models lenet300 lenet5] [--batch-size 128] [--steps 150] [--rounds 5]

Per model, each round times one epoch of `--steps` batches of every variant, in turn (so that a slower or busier
moment of the machine hits all of them alike), and the table gives the median images/s over the rounds:
- `plain`: a textbook loop (NCHW, SGD with momentum and weight decay; no masks, no schedule, no logging);
- `plain, channels_last`: the same loop with the model in channels_last (convolutional models only);
- `plain, channels_last, bf16`: and in bf16 autocast, where the device policy chooses it (a CPU with AMX);
- `tool, dense`: `train_phase` as a run's dense phase calls it, with the run's device policy (memory format,
  autocast for `precision=auto`), masks of ones and the cosine schedule;
- `tool, masked`: the same at the paper's kept fractions (a retraining phase).
Ratios: tool / plain NCHW fp32 (what the device policy gains), tool / plain in the tool's memory format and arithmetic
(the cost of what the tool adds), and masked / dense.
The data are generated images of the model's input shape held in memory, as the tool holds MNIST.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import pandas as pd
import torch
from torch import nn

from pruning_cli.config.schema import PhaseConfig
from pruning_cli.data.tensors import TensorSplit
from pruning_cli.models import get_model_spec
from pruning_cli.paper import PAPER_KEPT
from pruning_cli.parallel.shard import SINGLE_PROCESS
from pruning_cli.pruning.masks import full_masks, top_fraction_mask
from pruning_cli.run.runtime import DevicePolicy, device_policy
from pruning_cli.training.loop import MaskedWeights, PhaseCallbacks, PhaseExecution, train_phase

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


def synthetic_split(shape: tuple[int, int, int], size: int, device: torch.device) -> TensorSplit:
    generator = torch.Generator().manual_seed(0)
    return TensorSplit(
        torch.randn(size, *shape, generator=generator), torch.randint(10, (size,), generator=generator)
    ).to(device)


def fresh_model(name: str, policy: DevicePolicy | None, device: torch.device) -> nn.Module:
    """The model with the same initial weights every time, placed by `policy` (or plainly, NCHW)."""
    torch.manual_seed(0)
    model = get_model_spec(name).build(10)
    return policy.place(model) if policy is not None else model.to(device)


def plain_epoch(model: nn.Module, data: TensorSplit, batch_size: int, channels_last: bool, bf16: bool) -> float:
    """Images/s of one epoch of a textbook training loop."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).to(data.device)
    model.train()
    started = time.perf_counter()
    for start in range(0, len(data), batch_size):
        index = order[start : start + batch_size]
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(data.images[index]), data.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    loss.item()  # waits for the device
    return len(data) / (time.perf_counter() - started)


def tool_epoch(name: str, data: TensorSplit, batch_size: int, policy: DevicePolicy, masked: bool) -> float:
    """Images/s of one epoch of `train_phase`, as a run trains (dense phase) or retrains (paper's fractions)."""
    model = fresh_model(name, policy, data.device)
    weights = {layer: module.weight for layer, module in get_model_spec(name).prunable(model).items()}
    masks = full_masks(weights)
    if masked:
        masks = {
            layer: top_fraction_mask(weight, PAPER_KEPT[name][layer] / 100)[0] for layer, weight in weights.items()
        }
    masked_weights = MaskedWeights(list(weights.values()), list(masks.values()))
    masked_weights.mask_weights()
    phase = PhaseConfig(epochs=1, batch_size=batch_size, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    stats = []
    execution = PhaseExecution(
        torch.Generator().manual_seed(0), "bench", autocast=lambda: policy.autocast(phase.precision)
    )
    callbacks = PhaseCallbacks(on_epoch_end=lambda _progress, epoch: stats.append(epoch))
    train_phase(model, data, phase, masked_weights, execution, callbacks)
    return stats[0].images_per_second


def variants(name: str, batch_size: int, policy: DevicePolicy) -> dict[str, Callable[[TensorSplit], float]]:
    device = policy.device
    chosen = {"plain": lambda data: plain_epoch(fresh_model(name, None, device), data, batch_size, False, False)}
    if policy.channels_last:
        chosen["plain, channels_last"] = lambda data: plain_epoch(
            fresh_model(name, None, device), data, batch_size, True, False
        )
    if policy.bf16_by_default:
        chosen["plain, channels_last, bf16"] = lambda data: plain_epoch(
            fresh_model(name, None, device), data, batch_size, policy.channels_last, True
        )
    chosen["tool, dense"] = lambda data: tool_epoch(name, data, batch_size, policy, masked=False)
    chosen["tool, masked"] = lambda data: tool_epoch(name, data, batch_size, policy, masked=True)
    return chosen


def bench_model(name: str, args: argparse.Namespace) -> pd.DataFrame:
    spec = get_model_spec(name)
    convolutional = "conv" in spec.layer_kinds().values()
    policy = device_policy(args.device, False, SINGLE_PROCESS, convolutional)
    data = synthetic_split(spec.input_shape, args.batch_size * args.steps, policy.device)
    runs = variants(name, args.batch_size, policy)
    for run in runs.values():  # warm-up: allocator, kernels, thread pools
        run(TensorSplit(data.images[: 4 * args.batch_size], data.labels[: 4 * args.batch_size]))
    measured: dict[str, list[float]] = {variant: [] for variant in runs}
    for _ in range(args.rounds):
        for variant, run in runs.items():
            measured[variant].append(run(data))
    medians = {variant: statistics.median(values) for variant, values in measured.items()}
    same_arithmetic = [value for variant, value in medians.items() if variant.startswith("plain")][-1]
    return pd.DataFrame(
        {
            "model": name,
            "variant": list(medians),
            "images_per_second": [round(value) for value in medians.values()],
            "vs_plain": [value / medians["plain"] for value in medians.values()],
            "vs_plain_same_arithmetic": [value / same_arithmetic for value in medians.values()],
            "masked_vs_dense": [
                medians["tool, masked"] / medians["tool, dense"] if variant == "tool, masked" else float("nan")
                for variant in medians
            ],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"], choices=sorted(PAPER_KEPT))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150, help="batches per timed epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} batches per epoch, median of {args.rounds} alternated rounds")  # fmt: skip
    table = pd.concat([bench_model(name, args) for name in args.models], ignore_index=True)
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))


if __name__ == "__main__":
    main()
