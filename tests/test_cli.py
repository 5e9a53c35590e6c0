"""The installed `prune-run` end to end in a subprocess, on generated data, from a foreign working directory."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pruning_cli.models import get_model_spec

PRUNE_RUN = str(Path(sys.executable).parent / "prune-run")
SMOKE = [
    "dataset=synthetic", "dataset.num_train=512", "dataset.num_test=256", "train.epochs=2", "retrain.epochs=1",
    "train.batch_size=32", "retrain.batch_size=32",
]  # fmt: skip


def prune_run(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([PRUNE_RUN, *overrides], cwd=cwd, capture_output=True, text=True, env=environment)


@pytest.fixture(scope="module")
def lenet5_run(tmp_path_factory) -> Path:
    """One small iterative run of LeNet-5 to the paper's kept fractions."""
    out_dir = tmp_path_factory.mktemp("run")
    kept = "pruning.kept={conv1:0.66,conv2:0.12,fc1:0.075,fc2:0.19}"
    result = prune_run("model=lenet5", *SMOKE, "pruning.iterations=2", kept, f"hydra.run.dir={out_dir}", cwd=out_dir)
    assert result.returncode == 0, result.stderr
    assert "compression" in result.stdout and "dense" in result.stdout and "pruned" in result.stdout
    return out_dir


def test_metrics_csv_has_a_row_per_iteration_and_phase(lenet5_run):
    metrics = pd.read_csv(lenet5_run / "metrics.csv")
    assert list(metrics.columns[:10]) == [
        "iteration", "phase", "epochs", "params_total", "params_nonzero", "compression", "top1", "top5", "loss",
        "train_loss",
    ]  # fmt: skip
    assert list(zip(metrics.iteration, metrics.phase, strict=True)) == [
        (0, "train"), (1, "prune"), (1, "retrain"), (2, "prune"), (2, "retrain"),
    ]  # fmt: skip
    assert metrics.epochs.tolist() == [2, 0, 1, 0, 1]
    assert (metrics.params_total == 431_080).all()
    assert metrics.compression.tolist() == pytest.approx((431_080 / metrics.params_nonzero).tolist(), rel=1e-6)
    assert metrics.top1.between(0, 1).all() and (metrics.top5 >= metrics.top1).all()
    assert metrics.top1.iloc[0] > 0.5  # the synthetic classes are learnable: chance is 0.1
    # 330 + 3,000 + 30,000 + 950 weights kept, plus 580 biases: 12.4x, past the paper's 12x.
    assert metrics.params_nonzero.iloc[-1] == 34_860


def test_epochs_csv_logs_each_training_epoch_with_its_throughput(lenet5_run):
    epochs = pd.read_csv(lenet5_run / "epochs.csv")
    assert list(zip(epochs.iteration, epochs.phase, epochs.epoch, strict=True)) == [
        (0, "train", 1), (0, "train", 2), (1, "retrain", 1), (2, "retrain", 1),
    ]  # fmt: skip
    assert (epochs.images == 512).all()  # every training image once per epoch
    assert epochs.images_per_second.tolist() == pytest.approx((epochs.images / epochs.seconds).tolist(), rel=1e-5)
    assert (epochs.images_per_second > 0).all()
    metrics = pd.read_csv(lenet5_run / "metrics.csv")
    trained = metrics[metrics.epochs > 0]
    assert epochs.groupby(["iteration", "phase"]).train_loss.last().tolist() == pytest.approx(
        trained.train_loss.tolist(), rel=1e-5
    )  # the phase's train_loss is its last epoch's
    assert epochs.lr.iloc[1] == pytest.approx(0, abs=1e-9)  # cosine decay ends the phase at zero
    assert "dense training epoch 2/2: train loss" in (lenet5_run / "prune-run.log").read_text()


def test_layers_csv_reaches_the_kept_fractions_and_counts_flops(lenet5_run):
    layers = pd.read_csv(lenet5_run / "layers.csv")
    final = layers[(layers.iteration == 2) & (layers.phase == "retrain")].set_index("layer")
    assert final.weights_nonzero.to_dict() == {"conv1": 330, "conv2": 3_000, "fc1": 30_000, "fc2": 950}
    assert final.kept.tolist() == pytest.approx([0.66, 0.12, 0.075, 0.19])
    assert final.flops_total["conv1"] == 2 * 500 * 24 * 24 and final.flops_nonzero["conv1"] == 2 * 330 * 24 * 24
    pruned = layers[layers.phase == "prune"]
    assert (pruned.threshold > 0).all() and pruned["std"].notna().all()
    assert pruned.sensitivity.tolist() == pytest.approx((pruned.threshold / pruned["std"]).tolist(), rel=1e-5)


def test_model_pt_is_a_plain_state_dict_whose_zeros_match_the_count(lenet5_run):
    state = torch.load(lenet5_run / "model.pt", weights_only=True)
    model = get_model_spec("lenet5").build(10)
    model.load_state_dict(state)  # strict: same keys, no weight_orig / weight_mask
    metrics = pd.read_csv(lenet5_run / "metrics.csv")
    weights_nonzero = sum(int(torch.count_nonzero(v)) for k, v in state.items() if k.endswith("weight"))
    biases = sum(v.numel() for k, v in state.items() if k.endswith("bias"))
    assert weights_nonzero == metrics.params_nonzero.iloc[-1] - biases
    assert sorted(path.name for path in (lenet5_run / "checkpoints").iterdir()) == [
        "dense.pt", "iteration_1.pt", "iteration_2.pt", "last.pt",
    ]  # fmt: skip
    checkpoint = torch.load(lenet5_run / "checkpoints" / "iteration_2.pt", weights_only=True)
    for name, mask in checkpoint["masks"].items():
        assert torch.all(checkpoint["model"][f"{name}.weight"][~mask] == 0)


def test_a_dense_checkpoint_replaces_phase_one(lenet5_run, tmp_path):
    dense = lenet5_run / "checkpoints" / "dense.pt"
    result = prune_run(
        "model=lenet5", *SMOKE, "pruning.iterations=1", f"train.checkpoint={dense}", f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded, trained = pd.read_csv(tmp_path / "metrics.csv").iloc[0], pd.read_csv(lenet5_run / "metrics.csv").iloc[0]
    assert loaded.epochs == 0 and loaded.top1 == trained.top1 and loaded.loss == pytest.approx(trained.loss)


def test_a_checkpoint_of_another_model_is_refused_with_its_keys(lenet5_run, tmp_path):
    dense = lenet5_run / "checkpoints" / "dense.pt"
    stderr = _one_line_error(prune_run(*SMOKE, f"train.checkpoint={dense}", f"hydra.run.dir={tmp_path}", cwd=tmp_path))
    assert stderr.startswith(f"prune-run: error: checkpoint {dense} does not fit model=lenet300: missing keys fc3.")
    assert "unexpected keys conv1.bias, conv1.weight, conv2.bias and 1 more" in stderr
    assert "shapes differ: fc1.weight is (500, 800), model wants (300, 784)" in stderr and stderr.count("\n") == 1


def test_sensitivity_pruning_logs_threshold_as_s_times_surviving_std(tmp_path):
    result = prune_run(
        *SMOKE, "pruning.sensitivity=0.7", "pruning.iterations=2", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    layers = pd.read_csv(tmp_path / "layers.csv")
    pruned = layers[layers.phase == "prune"]
    assert pruned.threshold.tolist() == pytest.approx((0.7 * pruned["std"]).tolist(), rel=1e-5)
    second = pruned[pruned.iteration == 2].set_index("layer")
    first = pruned[pruned.iteration == 1].set_index("layer")
    assert (second.threshold > first.threshold).all()  # std of the survivors grows, and so does the threshold


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=resnet"], "Available options in 'model':\n\talexnet\n\tlenet300\n\tlenet5\n\tvgg16"),
        (["dataset=cifar"], "Available options in 'dataset':"),
        (["pruning.sensitivty=1.0"], "Key 'sensitivty' not in 'PruningConfig'"),
        (["train.epochs=many"], "Value 'many' of type 'str' could not be converted to Integer"),
        (["pruning.std=median"], "Invalid value 'median', expected one of [surviving, dense]"),
    ],
)
def test_unknown_names_fail_with_hydras_message(tmp_path, overrides, expected):
    assert expected in _one_line_error(prune_run(*overrides, f"hydra.run.dir={tmp_path}", cwd=tmp_path))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["pruning.sensitivity=-0.5"],
            "sensitivity of layer fc1 is -0.5; it must be >= 0 (threshold = sensitivity x std)",
        ),
        (["pruning.kept={fc1:1.5}"], "kept fraction of layer fc1 is 1.5; it must be in (0, 1]"),
        (["pruning.kept={fc1:0}"], "kept fraction of layer fc1 is 0.0; it must be in (0, 1]"),
        (["train.epochs=-1"], "train.epochs is -1; it must be >= 0"),
        (["retrain.batch_size=0"], "retrain.batch_size is 0; it must be >= 1"),
        (["train.lr=0"], "train.lr is 0.0; it must be > 0"),
        (["pruning.iterations=-2"], "pruning.iterations is -2; it must be >= 0"),
        (["pruning.kept=[0.5]"], "pruning.kept must be a mapping of layer to number, e.g. pruning.kept={fc1:0.5}"),
        (
            ["train.checkpoint=/nonexistent/dense.pt"],
            "checkpoint /nonexistent/dense.pt does not exist; give the path of a saved model (e.g. a run's model.pt)",
        ),
        (
            ["pruning.layer_sensitivity={conv1:0.5}"],
            "pruning names layer(s) conv1 that this model does not have; its prunable layers are: fc1, fc2, fc3",
        ),
    ],
)
def test_bad_pruning_settings_are_refused_before_training(tmp_path, overrides, expected):
    stderr = _one_line_error(prune_run(*SMOKE, *overrides, f"hydra.run.dir={tmp_path}", cwd=tmp_path))
    assert stderr == f"prune-run: error: {expected}\n"
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_mnist_folder_offline_names_the_folder(tmp_path, state):
    if state == "empty":
        (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    result = prune_run(
        "dataset=mnist", "dataset.download=false", f"dataset.root={tmp_path}", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    stderr = _one_line_error(result)
    assert stderr.startswith(f"prune-run: error: MNIST not found in {tmp_path / 'MNIST' / 'raw'}")
    assert "dataset=fashion_mnist" in stderr and stderr.count("\n") == 1


def test_pruning_that_would_empty_a_layer_is_capped_with_a_warning(tmp_path):
    result = prune_run(*SMOKE, "pruning=oneshot", "pruning.sensitivity=50", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pruning would remove every weight of fc1" in result.stdout
    assert "capped: each of its output units keeps its largest weight (300 kept)" in result.stdout
    layers = pd.read_csv(tmp_path / "layers.csv")
    final = layers[layers.phase == "retrain"].set_index("layer")
    assert final.weights_nonzero.to_dict() == {"fc1": 300, "fc2": 100, "fc3": 10}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(tmp_path):
    stderr = _one_line_error(prune_run(*SMOKE, "device=cuda", f"hydra.run.dir={tmp_path}", cwd=tmp_path))
    assert "device=cuda but this machine has no usable CUDA device" in stderr


def test_compiled_training_gives_the_eager_numbers(lenet5_run, tmp_path):
    kept = "pruning.kept={conv1:0.66,conv2:0.12,fc1:0.075,fc2:0.19}"
    result = prune_run(
        "model=lenet5", *SMOKE, "pruning.iterations=2", kept, "compile=true", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    eager = pd.read_csv(lenet5_run / "metrics.csv").drop(columns="seconds")
    compiled = pd.read_csv(tmp_path / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(compiled, eager, rtol=1e-4)  # inductor fuses differently: float rounding only


def test_alternating_iterations_prune_one_kind_and_freeze_the_other(tmp_path):
    kept = "pruning.kept={conv1:0.66,conv2:0.12,fc1:0.075,fc2:0.19}"
    result = prune_run(
        "model=lenet5", *SMOKE, "pruning.iterations=4", "pruning.alternate=true", kept, f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    layers = pd.read_csv(tmp_path / "layers.csv").set_index(["iteration", "phase", "layer"])
    pruned = {i: layers.loc[(i, "prune")].threshold.dropna().index.tolist() for i in range(1, 5)}
    assert pruned == {1: ["fc1", "fc2"], 2: ["conv1", "conv2"], 3: ["fc1", "fc2"], 4: ["conv1", "conv2"]}
    assert layers.loc[(1, "retrain")].kept.tolist() == pytest.approx([1, 1, 0.075**0.5, 0.19**0.5], abs=1e-4)
    assert layers.loc[(4, "retrain")].weights_nonzero.tolist() == [330, 3_000, 30_000, 950]
    dense = torch.load(tmp_path / "checkpoints" / "dense.pt", weights_only=True)["model"]
    first = torch.load(tmp_path / "checkpoints" / "iteration_1.pt", weights_only=True)["model"]
    second = torch.load(tmp_path / "checkpoints" / "iteration_2.pt", weights_only=True)["model"]
    assert torch.equal(first["conv1.weight"], dense["conv1.weight"])  # conv frozen while fc retrains
    assert not torch.equal(first["fc1.weight"], dense["fc1.weight"])
    assert torch.equal(second["fc2.weight"], first["fc2.weight"])  # fc frozen while conv retrains
    assert not torch.equal(second["conv2.weight"], first["conv2.weight"])
