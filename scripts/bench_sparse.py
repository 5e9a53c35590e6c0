"""Dense vs sparse (torch.sparse CSR) inference time, and dense / CSR / compact storage of the paper's networks.

    python scripts/bench_sparse.py [--repeats 20] [--threads N] [--device cpu|cuda]

Timing: the LeNets (whole model; conv layers stay dense) and the fc layers of AlexNet and VGG-16, with random
weights pruned by magnitude to the given kept fractions, at batch 1 and 64, median of `--repeats` runs after a
warm-up, under torch.inference_mode. Storage: all four networks (AlexNet and VGG-16 are torchvision's, randomly
initialised, no download) pruned per layer to the paper's kept fractions (PAPER.md, Tables 2-5), conv layers too.
Weights are random, so the positions of the survivors are unstructured: a trained network's fillers may differ.
"""

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Iterator

import pandas as pd
import torch
import torchvision
from torch import Tensor, nn

from pruning_cli.models import get_model_spec
from pruning_cli.sparse.formats import compact_bytes, csr_bytes, encode_compact, encode_csr
from pruning_cli.sparse.model import SparseLinear, sparsify

PAPER_KEPT = {
    "LeNet-300-100": {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26},
    "LeNet-5": {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19},
    "AlexNet": {
        "conv1": 0.84, "conv2": 0.38, "conv3": 0.35, "conv4": 0.37, "conv5": 0.37,
        "fc6": 0.09, "fc7": 0.09, "fc8": 0.25,
    },
    "VGG-16": {
        "conv1_1": 0.58, "conv1_2": 0.22, "conv2_1": 0.34, "conv2_2": 0.36, "conv3_1": 0.53, "conv3_2": 0.24,
        "conv3_3": 0.42, "conv4_1": 0.32, "conv4_2": 0.27, "conv4_3": 0.34, "conv5_1": 0.35, "conv5_2": 0.29,
        "conv5_3": 0.36, "fc6": 0.04, "fc7": 0.04, "fc8": 0.23,
    },
}  # fmt: skip

# (label, in_features, out_features, kept) of the single fc layers timed, at the paper's kept fractions (PAPER.md).
TIMED_FC_LAYERS = [
    ("AlexNet fc6", 9216, 4096, 0.09),
    ("AlexNet fc7", 4096, 4096, 0.09),
    ("AlexNet fc8", 4096, 1000, 0.25),
    ("VGG-16 fc6", 25088, 4096, 0.04),
    ("VGG-16 fc7", 4096, 4096, 0.04),
    ("VGG-16 fc8", 4096, 1000, 0.23),
]
BATCHES = (1, 64)
LENET_NAMES = {"LeNet-300-100": "lenet300", "LeNet-5": "lenet5"}


@torch.no_grad()
def prune_to_fraction_(weight: Tensor, kept: float) -> None:
    """Zero all but exactly round(kept * numel) largest magnitudes, as top_fraction_mask does, but with kthvalue
    (topk takes ~7 s on VGG's 25088x4096 fc6 on 2 cores, kthvalue ~2 s)."""
    keep = round(kept * weight.numel())
    if keep >= weight.numel():
        return
    magnitudes = weight.abs().flatten()
    threshold = magnitudes.kthvalue(weight.numel() - keep + 1).values
    mask = magnitudes > threshold
    ties = (magnitudes == threshold).nonzero().flatten()  # float32 magnitudes repeat in layers this large
    mask[ties[: keep - int(mask.sum())]] = True
    weight.mul_(mask.view_as(weight))


def paper_layers(network: str, model: nn.Module) -> dict[str, nn.Module]:
    """The prunable modules under the paper's names (conv1.., fc6..; VGG's conv<block>_<i>)."""
    if network in LENET_NAMES:
        return get_model_spec(LENET_NAMES[network]).prunable(model)
    convs, block, index = {}, 1, 0
    for module in model.features:
        if isinstance(module, nn.MaxPool2d):
            block, index = block + 1, 0
        elif isinstance(module, nn.Conv2d):
            index += 1
            convs[f"conv{len(convs) + 1}" if network == "AlexNet" else f"conv{block}_{index}"] = module
    linears = [module for module in model.classifier if isinstance(module, nn.Linear)]
    return convs | {f"fc{6 + i}": module for i, module in enumerate(linears)}


def build_network(network: str) -> nn.Module:
    if network in LENET_NAMES:
        return get_model_spec(LENET_NAMES[network]).build(10)
    return torchvision.models.alexnet() if network == "AlexNet" else torchvision.models.vgg16()


def pruned_network(network: str) -> tuple[nn.Module, dict[str, nn.Module]]:
    torch.manual_seed(0)
    model = build_network(network).eval()
    layers = paper_layers(network, model)
    assert layers.keys() == PAPER_KEPT[network].keys(), (network, list(layers))
    for name, module in layers.items():
        prune_to_fraction_(module.weight, PAPER_KEPT[network][name])
    return model, layers


def storage_row(network: str) -> dict:
    """Bytes of the pruned network: dense float32, CSR (smallest index dtypes), compact (k-bit gaps, fillers)."""
    model, layers = pruned_network(network)
    pruned = {id(module.weight) for module in layers.values()}
    rest = sum(4 * p.numel() for p in model.parameters() if id(p) not in pruned)  # biases: dense everywhere
    row = {"network": network, "params": sum(p.numel() for p in model.parameters()), "nonzero": 0, "fillers": 0}
    row |= {"dense_MB": rest, "csr_MB": rest, "compact_MB": rest}
    for module in layers.values():
        csr, compact = encode_csr(module.weight), encode_compact(module.weight)
        row["nonzero"] += len(csr["values"])
        row["fillers"] += compact["count"] - len(csr["values"])
        row["dense_MB"] += 4 * module.weight.numel()
        row["csr_MB"] += csr_bytes(csr)
        row["compact_MB"] += compact_bytes(compact)
    row["nonzero"] += sum(p.numel() for p in model.parameters() if id(p) not in pruned)
    for key in ("dense_MB", "csr_MB", "compact_MB"):
        row[key] /= 1e6
    row["dense/csr"] = row["dense_MB"] / row["csr_MB"]
    row["dense/compact"] = row["dense_MB"] / row["compact_MB"]
    return row


def median_ms(run: Callable[[], Tensor], repeats: int, device: torch.device) -> float:
    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(max(2, repeats // 5)):  # warm-up: allocator, MKL/cuSPARSE handles, caches
        run()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def timing_cases(device: torch.device) -> Iterator[tuple[str, float, nn.Module, nn.Module, tuple[int, ...]]]:
    """(label, kept, dense module, sparse module, input shape without batch) for every timed case."""
    for network, name in LENET_NAMES.items():
        model, layers = pruned_network(network)
        kept = sum(int(torch.count_nonzero(m.weight)) for m in layers.values())
        kept /= sum(m.weight.numel() for m in layers.values())
        sparse = sparsify(copy.deepcopy(model), get_model_spec(name).layers.values())
        yield network, kept, model.to(device), sparse.to(device), get_model_spec(name).input_shape
    for label, in_features, out_features, kept in TIMED_FC_LAYERS:
        torch.manual_seed(0)
        dense = nn.Linear(in_features, out_features).eval()
        prune_to_fraction_(dense.weight, kept)
        yield label, kept, dense.to(device), SparseLinear.from_dense(dense).to(device), (in_features,)


def timing_rows(device: torch.device, repeats: int) -> Iterator[dict]:
    for label, kept, dense, sparse, input_shape in timing_cases(device):
        for batch in BATCHES:
            inputs = torch.randn(batch, *input_shape, device=device)
            with torch.inference_mode():
                difference = (dense(inputs) - sparse(inputs)).abs().max().item()
                dense_ms = median_ms(lambda d=dense, x=inputs: d(x), repeats, device)
                sparse_ms = median_ms(lambda s=sparse, x=inputs: s(x), repeats, device)
            yield {
                "case": label,
                "kept": kept,
                "batch": batch,
                "dense_ms": dense_ms,
                "sparse_ms": sparse_ms,
                "speedup": dense_ms / sparse_ms,
                "max_abs_diff": difference,
            }
        del dense, sparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per case (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}; median of {args.repeats} runs after warm-up\n")

    timing = pd.DataFrame(timing_rows(device, args.repeats))
    print(
        timing.to_string(
            index=False,
            formatters={
                "kept": "{:.1%}".format,
                "dense_ms": "{:.3f}".format,
                "sparse_ms": "{:.3f}".format,
                "speedup": "{:.2f}x".format,
                "max_abs_diff": "{:.1e}".format,
            },
        )
    )
    print("\nstorage at the paper's kept fractions (biases dense in every format; MB = 10^6 bytes)")
    storage = pd.DataFrame(storage_row(network) for network in PAPER_KEPT)
    storage["kept"] = storage["nonzero"] / storage["params"]
    print(
        storage.to_string(
            index=False,
            formatters={
                "params": "{:,}".format,
                "nonzero": "{:,}".format,
                "fillers": "{:,}".format,
                "kept": "{:.1%}".format,
                **{key: "{:.3f}".format for key in ("dense_MB", "csr_MB", "compact_MB")},
                **{key: "{:.2f}x".format for key in ("dense/csr", "dense/compact")},
            },
        )
    )


if __name__ == "__main__":
    main()
