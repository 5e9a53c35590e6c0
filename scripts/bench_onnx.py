"""onnxruntime on the graph of `prune-export --format onnx` against the dense torch model, per run directory.

    python scripts/bench_onnx.py RUN_DIR [RUN_DIR...] [--repeats 50] [--threads N] [--data-root DIR]

Each run's model.pt is exported as prune-export does (dead units removed, checked on the run's first 1,000 test
images, or fixed random inputs where they are not here) into a temporary directory, never into the run. Where the
run's data set is MNIST-like and its files are there (`--data-root`), the table shows that check's figures and the
test accuracy of both. Then timed at batch 1 and 64 (median of `--repeats` runs after a warm-up, on N threads):
model.pt as trained in torch (dense layers with their zeros), the compacted model in torch, and the compacted graph
in onnxruntime (CPUExecutionProvider), beside the graph of `--keep-dead` (model.pt's shapes) in onnxruntime.
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import pandas as pd
import torch

from pruning_cli.data.mnist_like import load_mnist_like
from pruning_cli.errors import UserError
from pruning_cli.records.contract import MODEL_FILE, excluded_layers, read_run_record
from pruning_cli.records.files import load_model_state
from pruning_cli.sparse.check_images import CheckImages, check_images
from pruning_cli.sparse.cli import model_name_from_run, model_spec, run_config, run_input_shape
from pruning_cli.sparse.export import build_dense_model, export_state_dict, model_from_state
from pruning_cli.sparse.onnx_export import CHECK_IMAGES, INPUT, OUTPUT, write_checked_onnx

BATCHES = (1, 64)
TEST_IMAGES = 1000


def median_ms(step: Callable[[], object], repeats: int) -> float:
    """Median wall time of `step` in ms over `repeats` runs, after 3 warm-up runs."""
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def test_images(run_dir: Path, data_root: Path | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first TEST_IMAGES test images and labels of the run's MNIST-like data set, or None where there are none."""
    dataset = read_run_record(run_dir)["config"].get("dataset") or {}
    if dataset.get("name") not in ("mnist", "fashion_mnist"):
        return None
    root = data_root or Path(dataset.get("root") or "~/.cache/pruning_cli/datasets")
    try:
        data = load_mnist_like(dataset["name"], root, download=False, system_dir=dataset.get("system_dir"))
    except UserError:
        return None
    return data.test.images[:TEST_IMAGES], data.test.labels[:TEST_IMAGES]


def test_check(session, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """onnxruntime against model.pt on real test images: predictions that differ, logits, accuracies."""
    with torch.no_grad():
        expected = model(images)
    ours = torch.from_numpy(session.run([OUTPUT], {INPUT: images.numpy()})[0])
    return {
        "test_images": len(images),
        "top1_differs": int((ours.argmax(1) != expected.argmax(1)).sum()),
        "max_logit_diff": float((ours - expected).abs().max()),
        "acc_model_pt": float((expected.argmax(1) == labels).float().mean()),
        "acc_onnx": float((ours.argmax(1) == labels).float().mean()),
    }


def onnx_session(model, reference, inputs: CheckImages, name: str, path: Path, threads: int):
    """Export `model` as prune-export does (checked against `reference`, model.pt) and open it in onnxruntime."""
    write_checked_onnx(model, reference, inputs, path, name)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_run(run_dir: Path, repeats: int, threads: int, data_root: Path | None) -> tuple[list[dict], dict]:
    """Timing rows (one per batch size) and the test-image check of one run."""
    name = model_name_from_run(run_dir)
    spec, state = model_spec(run_dir, name), load_model_state(run_dir / MODEL_FILE)
    exported, _ = export_state_dict(state, name, True, excluded_layers(run_dir), spec)
    dense, compacted = model_from_state(name, state, spec), build_dense_model(exported, spec)
    config = run_config(run_dir)
    shape = run_input_shape(config, spec)
    inputs = check_images(config, shape, CHECK_IMAGES)
    with tempfile.TemporaryDirectory() as directory:
        session = onnx_session(compacted, dense, inputs, name, Path(directory) / "model.onnx", threads)
        kept = onnx_session(dense, dense, inputs, name, Path(directory) / "keep_dead.onnx", threads)
        sizes = {"onnx_bytes": (Path(directory) / "model.onnx").stat().st_size}
        sizes["keep_dead_onnx_bytes"] = (Path(directory) / "keep_dead.onnx").stat().st_size
    data = test_images(run_dir, data_root)
    check = {
        "model": name,
        "export_checked_on": inputs.source,
        **sizes,
        **(test_check(session, dense, *data) if data else {"test_images": 0}),
    }
    rows = []
    for batch in BATCHES:
        images = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
        feed = {INPUT: images.numpy()}
        with torch.inference_mode():
            row = {
                "model": name,
                "batch": batch,
                "torch_dense_ms": median_ms(lambda images=images: dense(images), repeats),
                "torch_compacted_ms": median_ms(lambda images=images: compacted(images), repeats),
                "ort_keep_dead_ms": median_ms(lambda feed=feed: kept.run([OUTPUT], feed), repeats),
                "ort_compacted_ms": median_ms(lambda feed=feed: session.run([OUTPUT], feed), repeats),
            }
        row["speedup_vs_torch_dense"] = row["torch_dense_ms"] / row["ort_compacted_ms"]
        rows.append(row)
    return rows, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data-root", type=Path, help="where the run's data set is (default: its dataset.root)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timings, checks = [], []
    for run_dir in args.run_dirs:
        rows, check = bench_run(run_dir, args.repeats, args.threads, args.data_root)
        timings += rows
        checks.append(check)
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, "
        f"median of {args.repeats}"
    )
    print(pd.DataFrame(checks).to_string(index=False))
    print(pd.DataFrame(timings).to_string(index=False, float_format=lambda value: f"{value:.3f}"))


if __name__ == "__main__":
    main()
