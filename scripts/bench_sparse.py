"""Dense vs sparse (torch.sparse CSR) inference time, dense vs 2:4 on a GPU's sparse tensor cores, and dense / CSR /
compact / quantized storage of the paper's networks.

    python scripts/bench_sparse.py [--repeats 20] [--threads N] [--device cpu|cuda] [--storage-only | --timing-only]

Timing: the LeNets (whole model; conv layers stay dense) and the fc layers of AlexNet and VGG-16, with random
weights pruned by magnitude to the given kept fractions, at batch 1 and 64, median of `--repeats` runs after a
warm-up, under torch.inference_mode. On CUDA, also the fc layers the 2:4 kernels take (AlexNet's and VGG-16's
fc6 / fc7) in fp16, dense against 2:4 (torch.sparse.to_sparse_semi_structured, as the model of prune-export
--format semi_structured runs them) at batch 1, 64 and 256.
Storage: all four networks (AlexNet and VGG-16 are torchvision's, randomly initialised, no download) pruned per
layer to the paper's kept fractions (PAPER.md, Tables 2-5), conv layers too, sized by prune-export's report
without dead-unit removal; then each layer's survivors quantized by k-means (conv 8 bits, fc 5 bits, as
quantize=kmeans does before its fine-tuning) and the files of `prune-export --format quantized` and `--format
deep` encoded (their exact byte counts).
Weights are random, so the positions of the survivors are unstructured: a trained network's fillers may differ.
"""

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Iterator

import pandas as pd
import torch
from torch import Tensor, nn

from pruning_cli.models import get_model_spec
from pruning_cli.paper import PAPER_KEPT, network_name
from pruning_cli.pruning.nm_sparsity import fits_semi_structured, n_of_m_mask
from pruning_cli.quantize.kmeans import quantize_layer
from pruning_cli.sparse.export import export_state_dict, file_sizes
from pruning_cli.sparse.model import SparseLinear, sparsify
from pruning_cli.sparse.semi_structured import to_semi_structured

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
TWO_FOUR_LAYERS = [(label, inputs, outputs) for label, inputs, outputs, _ in TIMED_FC_LAYERS
                   if fits_semi_structured((outputs, inputs))]  # fmt: skip
TWO_FOUR_BATCHES = (1, 64, 256)
LENETS = ("lenet300", "lenet5")


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


def pruned_network(name: str) -> nn.Module:
    """The registry's model (AlexNet/VGG-16: torchvision's, 1000 classes), random weights, each prunable layer
    pruned to the paper's kept fraction (paper.PAPER_KEPT, Tables 2-5)."""
    torch.manual_seed(0)
    spec = get_model_spec(name)
    model = spec.build(10 if name in LENETS else 1000).eval()
    for layer, module in spec.prunable(model).items():
        prune_to_fraction_(module.weight, PAPER_KEPT[name][layer] / 100)
    return model


def storage_row(name: str) -> dict:
    """Bytes of the pruned network as prune-export reports them (dense float32, CSR, compact; biases dense), and of
    its quantized and quantized + Huffman files."""
    model = pruned_network(name)
    total = export_state_dict(model.state_dict(), name)[1].set_index("layer").loc["total"]
    params = sum(parameter.numel() for parameter in model.parameters())
    row = {"network": network_name(name), "params": params, "nonzero": total.nonzero, "fillers": total.fillers}
    row |= {f"{kind}_MB": total[f"{kind}_bytes"] / 1e6 for kind in ("dense", "csr", "compact")}
    row["dense/csr"], row["dense/compact"] = total.csr_ratio, total.compact_ratio
    with torch.no_grad():
        for module in get_model_spec(name).prunable(model).values():
            weight = module.weight
            weight.copy_(quantize_layer(weight, weight != 0, 8 if weight.dim() > 2 else 5).weight())
    exported = export_state_dict(model.state_dict(), name)[0]
    for encoding in ("quantized", "deep"):
        size = file_sizes(exported, name, encoding)["total"]
        row[f"{encoding}_MB"], row[f"dense/{encoding}"] = size / 1e6, total.dense_bytes / size
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
    for name in LENETS:
        spec, model = get_model_spec(name), pruned_network(name)
        layers = spec.prunable(model).values()
        kept = sum(int(torch.count_nonzero(m.weight)) for m in layers) / sum(m.weight.numel() for m in layers)
        sparse = sparsify(copy.deepcopy(model), spec.layers.values())
        yield network_name(name), kept, model.to(device), sparse.to(device), spec.input_shape
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


def two_four_rows(
    device: torch.device,
    repeats: int,
    layers: list[tuple[str, int, int]] = TWO_FOUR_LAYERS,
    convert: Callable[[nn.Module, list[str]], nn.Module] = to_semi_structured,
) -> Iterator[dict]:
    """Dense fp16 against the same layer pruned 2:4 by magnitude and `convert`ed (the semi-structured kernels)."""
    for label, in_features, out_features in layers:
        torch.manual_seed(0)
        dense = nn.Linear(in_features, out_features).to(device, torch.float16).eval()
        with torch.no_grad():
            dense.weight.mul_(n_of_m_mask(dense.weight, torch.ones_like(dense.weight, dtype=torch.bool), 2, 4))
        sparse = convert(copy.deepcopy(dense), [""])  # "": the module itself
        for batch in TWO_FOUR_BATCHES:
            inputs = torch.randn(batch, in_features, device=device, dtype=torch.float16)
            with torch.inference_mode():
                difference = (dense(inputs) - sparse(inputs)).abs().max().item()
                dense_ms = median_ms(lambda d=dense, x=inputs: d(x), repeats, device)
                sparse_ms = median_ms(lambda s=sparse, x=inputs: s(x), repeats, device)
            yield {"layer": label, "batch": batch, "dense_ms": dense_ms, "two_four_ms": sparse_ms,
                   "speedup": dense_ms / sparse_ms, "max_abs_diff": difference}  # fmt: skip
        del dense, sparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per case (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--storage-only", action="store_true", help="skip the timing, print the storage table")
    parser.add_argument("--timing-only", action="store_true", help="skip the storage table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}; median of {args.repeats} runs after warm-up\n")

    if not args.storage_only:
        print_timing(device, args.repeats)
        if device.type == "cuda":
            print("\n2:4 (fp16, torch.sparse.to_sparse_semi_structured) against dense fp16")
            print(
                pd.DataFrame(two_four_rows(device, args.repeats)).to_string(index=False, float_format="{:.3f}".format)
            )
        else:
            print("\n2:4 timing skipped: the 2:4 kernels run on a CUDA GPU (--device cuda)")
    if args.timing_only:
        return
    print("\nstorage at the paper's kept fractions (biases dense in every format; MB = 10^6 bytes)")
    storage = pd.DataFrame(storage_row(name) for name in PAPER_KEPT)
    storage["kept"] = storage["nonzero"] / storage["params"]
    print(
        storage.to_string(
            index=False,
            formatters={
                "params": "{:,}".format,
                "nonzero": "{:,}".format,
                "fillers": "{:,}".format,
                "kept": "{:.1%}".format,
                **{f"{kind}_MB": "{:.3f}".format for kind in ("dense", "csr", "compact", "quantized", "deep")},
                **{f"dense/{kind}": "{:.2f}x".format for kind in ("csr", "compact", "quantized", "deep")},
            },
        )
    )


def print_timing(device: torch.device, repeats: int) -> None:
    timing = pd.DataFrame(timing_rows(device, repeats))
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


if __name__ == "__main__":
    main()
