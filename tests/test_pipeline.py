"""The three phases in process on generated data: what each CSV, checkpoint and model.pt holds."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from runs import LENET5_PAPER_KEPT, SMOKE, pruning_run_in_process, run_in_process, without_wall_time

from pruning_cli.data import ImageData, TensorSplit
from pruning_cli.errors import UserError
from pruning_cli.models import get_model_spec
from pruning_cli.records.contract import read_run_record
from pruning_cli.run.runtime import cpu_has_amx


@pytest.fixture(scope="module")
def lenet5_run(tmp_path_factory) -> Path:
    """One small iterative run of LeNet-5 to the paper's kept fractions."""
    out_dir = tmp_path_factory.mktemp("run")
    run_in_process(out_dir, "model=lenet5", *SMOKE, "pruning.iterations=2", LENET5_PAPER_KEPT)
    return out_dir


def test_metrics_csv_has_a_row_per_iteration_and_phase(lenet5_run):
    metrics = pd.read_csv(lenet5_run / "metrics.csv")
    assert list(metrics.columns) == [
        "iteration", "phase", "epochs", "params_total", "params_nonzero", "compression", "top1", "top5", "loss",
        "val_top1", "val_loss", "confirm_top1", "confirm_loss", "train_loss", "seconds", "val_lost", "val_gained",
        "val_drop", "val_bound", "verdict",
    ]  # fmt: skip
    assert metrics.verdict.isna().all()  # the paper's rule tests nothing on validation
    assert metrics.val_top1.isna().all() and metrics.val_loss.isna().all()  # no validation split held out
    assert metrics.confirm_top1.isna().all()  # nor a confirmation split
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
    assert checkpoint["trained_on"] == [
        {"dataset": "synthetic", "images": 512, "val_split": 0, "split_seed": 0, "confirm_split": 0}
    ]


def test_run_json_records_the_config_and_the_training_data(lenet5_run):
    record = read_run_record(lenet5_run)
    assert record["config"]["model"]["name"] == "lenet5" and record["config"]["task"] == {"name": "prune"}
    assert record["config"]["pruning"]["kept"] == {"conv1": 0.66, "conv2": 0.12, "fc1": 0.075, "fc2": 0.19}
    assert record["config"]["retrain"]["regularization"] == "l2"
    assert record["trained_on"] == [
        {"dataset": "synthetic", "images": 512, "val_split": 0, "split_seed": 0, "confirm_split": 0}
    ]
    arithmetic = "bf16" if cpu_has_amx() else "fp32"  # precision=auto: the device policy's choice, recorded
    assert record["runtime"] == {
        "device": "cpu", "memory_format": "channels_last", "arithmetic": {"train": arithmetic, "retrain": arithmetic},
        "decode": "in memory",
    }  # fmt: skip


def test_a_dense_checkpoint_replaces_phase_one(lenet5_run, tmp_path):
    dense = lenet5_run / "checkpoints" / "dense.pt"
    run_in_process(tmp_path, "model=lenet5", *SMOKE, "pruning.iterations=1", f"train.checkpoint={dense}")
    loaded, trained = pd.read_csv(tmp_path / "metrics.csv").iloc[0], pd.read_csv(lenet5_run / "metrics.csv").iloc[0]
    assert loaded.epochs == 0 and loaded.top1 == trained.top1 and loaded.loss == pytest.approx(trained.loss)


def test_a_pruned_checkpoint_continues_with_its_zeros_as_pruned(lenet5_run, tmp_path):
    pruned = torch.load(lenet5_run / "model.pt", weights_only=True)
    nonzero = pd.read_csv(lenet5_run / "metrics.csv").params_nonzero.iloc[-1]
    checkpoint = f"train.checkpoint={lenet5_run / 'model.pt'}"
    only_fc1 = ["pruning.iterations=1", "pruning.kept={fc1:0.05}", "pruning.sensitivity=null"]
    run_in_process(tmp_path, "model=lenet5", *SMOKE, *only_fc1, checkpoint)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics.params_nonzero.iloc[0] == nonzero  # iteration 0 counts the zeros as pruned
    layers = pd.read_csv(tmp_path / "layers.csv")
    final = layers[layers.phase == "retrain"].set_index("layer").weights_nonzero.to_dict()
    assert final == {"conv1": 330, "conv2": 3_000, "fc1": 20_000, "fc2": 950}  # retraining revived no weight
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    for key in ("conv1.weight", "conv2.weight", "fc2.weight"):
        assert torch.equal(state[key] != 0, pruned[key] != 0)


def test_a_checkpoint_of_another_model_is_refused_with_its_keys(lenet5_run, tmp_path):
    dense = lenet5_run / "checkpoints" / "dense.pt"
    with pytest.raises(UserError) as refused:
        run_in_process(tmp_path, *SMOKE, f"train.checkpoint={dense}")
    message = str(refused.value)
    assert message.startswith(f"checkpoint {dense} does not fit model=lenet300: missing keys fc3.")
    assert "unexpected keys conv1.bias, conv1.weight, conv2.bias and 1 more" in message
    assert "shapes differ: fc1.weight is (500, 800), model wants (300, 784)" in message


def test_sensitivity_pruning_logs_threshold_as_s_times_surviving_std(tmp_path):
    run_in_process(tmp_path, *SMOKE, "pruning.sensitivity=0.7", "pruning.iterations=2")
    layers = pd.read_csv(tmp_path / "layers.csv")
    pruned = layers[layers.phase == "prune"]
    assert pruned.threshold.tolist() == pytest.approx((0.7 * pruned["std"]).tolist(), rel=1e-5)
    second = pruned[pruned.iteration == 2].set_index("layer")
    first = pruned[pruned.iteration == 1].set_index("layer")
    assert (second.threshold > first.threshold).all()  # std of the survivors grows, and so does the threshold


def test_pruning_that_would_empty_a_layer_is_capped_with_a_warning(tmp_path, caplog):
    run_in_process(tmp_path, *SMOKE, "pruning=oneshot", "pruning.sensitivity=50")
    assert "pruning would remove every weight of fc1" in caplog.text
    assert "capped: each of its output units keeps its largest weight (300 kept)" in caplog.text
    layers = pd.read_csv(tmp_path / "layers.csv")
    final = layers[layers.phase == "retrain"].set_index("layer")
    assert final.weights_nonzero.to_dict() == {"fc1": 300, "fc2": 100, "fc3": 10}


def test_alternating_iterations_prune_one_kind_and_freeze_the_other(tmp_path):
    run_in_process(
        tmp_path, "model=lenet5", *SMOKE, "pruning.iterations=4", "pruning.alternate=true", LENET5_PAPER_KEPT
    )
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


@pytest.mark.slow
def test_compiled_training_gives_the_eager_numbers(lenet5_run, tmp_path):
    run_in_process(tmp_path, "model=lenet5", *SMOKE, "pruning.iterations=2", LENET5_PAPER_KEPT, "compile=true")
    eager = without_wall_time(lenet5_run / "metrics.csv")
    compiled = without_wall_time(tmp_path / "metrics.csv")
    pd.testing.assert_frame_equal(compiled, eager, rtol=1e-4)  # inductor fuses differently: float rounding only


def test_channels_last_gives_the_contiguous_numbers_up_to_rounding_and_repeats_exactly(lenet5_run, tmp_path):
    """The CPU policy puts conv models in channels_last (faster kernels): the same numbers as the contiguous format up
    to float rounding, and a second run with the same seed repeats the first bit for bit."""
    overrides = ["model=lenet5", *SMOKE, "pruning.iterations=2", LENET5_PAPER_KEPT]
    contiguous = pruning_run_in_process(tmp_path / "contiguous", *overrides, channels_last=False)
    assert not contiguous.model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    for name in ("metrics.csv", "layers.csv"):
        pd.testing.assert_frame_equal(
            without_wall_time(tmp_path / "contiguous" / name), without_wall_time(lenet5_run / name), rtol=1e-4
        )
    again = pruning_run_in_process(tmp_path / "again", *overrides)
    assert again.model.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    for name in ("metrics.csv", "layers.csv", "epochs.csv"):
        pd.testing.assert_frame_equal(
            without_wall_time(tmp_path / "again" / name), without_wall_time(lenet5_run / name)
        )


def test_validation_columns_sit_beside_the_test_ones_and_no_decision_reads_the_test_split(tmp_path):
    """A run whose test labels are scrambled makes exactly the same masks and validation numbers: the test split
    is only reported."""
    overrides = [*SMOKE, "dataset.val_split=128", "pruning.iterations=2", "pruning.sensitivity=0.8"]
    honest = pruning_run_in_process(tmp_path / "honest", *overrides)

    def scramble(data: ImageData) -> ImageData:
        labels = data.test.labels[torch.randperm(len(data.test), generator=torch.Generator().manual_seed(1))]
        return replace(data, test=TensorSplit(data.test.images, (labels + 1) % data.num_classes))

    scrambled = pruning_run_in_process(tmp_path / "scrambled", *overrides, transform_data=scramble)
    assert all(torch.equal(honest.masks[name], scrambled.masks[name]) for name in honest.masks)
    ours, theirs = pd.read_csv(tmp_path / "honest" / "metrics.csv"), pd.read_csv(tmp_path / "scrambled" / "metrics.csv")
    assert ours.val_top1.between(0, 1).all() and ours.val_loss.gt(0).all()
    pd.testing.assert_series_equal(ours.val_top1, theirs.val_top1)
    pd.testing.assert_series_equal(ours.val_loss, theirs.val_loss)
    assert (theirs.top1 < ours.top1).all()  # the test columns did see the scrambling
