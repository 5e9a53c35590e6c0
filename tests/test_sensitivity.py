"""Sensitivity analysis both ways (one process, Hydra multirun) on generated data, and the activation counts."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from runs import SMOKE, prune_run, run_in_process
from torch import nn

from pruning_cli.config.schema import LevelKind
from pruning_cli.data.tensors import TensorSplit
from pruning_cli.errors import UserError
from pruning_cli.records.contract import read_run_record
from pruning_cli.report.cli import run as report
from pruning_cli.run.sensitivity import layer_sensitivity
from pruning_cli.training.activations import InputDensity

ANALYSIS = [*SMOKE, "model=lenet300", "task=sensitivity", "dataset.val_split=128"]


def test_input_density_counts_the_zeros_each_layer_sees():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3, 4))
        model[0].bias.zero_()
    inputs = torch.tensor([[1.0, -1.0, 0.0, 5.0], [2.0, 3.0, -4.0, 0.0]])
    with InputDensity({"fc1": model[0], "fc2": model[2]}) as density:
        model(inputs)
    # fc1 sees 6 of 8 non-zero; fc2 sees relu([1, -1, 0]) and relu([2, 3, -4]): 3 of 6 non-zero.
    assert density.fractions() == {"fc1": 6 / 8, "fc2": 3 / 6}
    model(inputs)  # the hooks are gone once the block ends
    assert density.total == {"fc1": 8, "fc2": 6}


def test_layer_sensitivity_prunes_one_layer_at_a_time_and_restores_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    data = TensorSplit(torch.randn(40, 6), torch.randint(3, (40,)))
    weights = {"fc1": model[0].weight, "fc2": model[2].weight}
    alive = {name: torch.ones_like(weight, dtype=torch.bool) for name, weight in weights.items()}
    rows = pd.DataFrame(layer_sensitivity(model, weights, alive, data, [0.0, 1.0, 100.0], LevelKind.sensitivity, 16))
    assert rows.layer.tolist() == ["none", "fc1", "fc1", "fc1", "fc2", "fc2", "fc2"]
    fc1 = rows[rows.layer == "fc1"]
    assert fc1.kept.tolist() == [
        1.0,
        pytest.approx((before["0.weight"].abs() >= before["0.weight"].std()).float().mean().item()),
        5 / 30,  # a level that would empty the layer is capped as in the pipeline: one weight per output unit
    ]
    assert fc1.threshold.tolist() == pytest.approx(
        [0.0, before["0.weight"].std().item(), 100 * before["0.weight"].std().item()]
    )
    assert rows.top1.iloc[1] == rows.top1.iloc[0]  # level 0 prunes nothing
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory) -> Path:
    """A dense LeNet-300-100 trained with 128 training images held out (the analysis's validation split)."""
    out_dir = tmp_path_factory.mktemp("dense")
    run_in_process(out_dir, *SMOKE, "pruning.iterations=0", "dataset.val_split=128")
    return out_dir / "model.pt"


def test_the_analysis_prunes_each_layer_at_each_level_on_the_validation_split(dense_checkpoint, tmp_path):
    run_in_process(tmp_path, *ANALYSIS, f"train.checkpoint={dense_checkpoint}", "task.levels=[0.5,1.5]")
    points = pd.read_csv(tmp_path / "sensitivity.csv")
    assert len(points) == 1 + 3 * 2 and set(points.layer) == {"none", "fc1", "fc2", "fc3"}
    assert (points.groupby("layer").kept.diff().dropna() < 0).all()  # a higher level keeps fewer weights
    assert points[points.layer != "none"].sensitivity.tolist() == pytest.approx([0.5, 1.5] * 3, rel=1e-5)


@pytest.mark.slow
def test_three_submitit_jobs_give_the_in_process_points_and_one_report(dense_checkpoint, tmp_path, capsys):
    """A 3-job sweep through submitit's job machinery (submitit_local: what Slurm runs, on this machine) finishes
    each job, matches the one-process analysis point for point, and prune-report reads the sweep."""
    single = tmp_path / "single"
    run_in_process(single, *ANALYSIS, f"train.checkpoint={dense_checkpoint}", "task.levels=[1.5]")
    in_process = pd.read_csv(single / "sensitivity.csv")
    sweep = tmp_path / "sweep"
    result = prune_run(
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *ANALYSIS,
        f"train.checkpoint={dense_checkpoint}", "task.layer=fc1,fc2,fc3", "task.level=1.5",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list(sweep.glob(".submitit/*/*_result.pkl"))) == 3  # submitit's record of each finished job
    jobs = pd.concat(pd.read_csv(path) for path in sorted(sweep.glob("*/sensitivity.csv")))
    points = jobs[jobs.layer != "none"].sort_values("layer").reset_index(drop=True)
    expected = in_process[in_process.layer != "none"].sort_values("layer").reset_index(drop=True)
    pd.testing.assert_frame_equal(points, expected)
    assert report([str(sweep), "--out", str(tmp_path / "report")]) == 0  # prune-report, in this process
    assert f"0 pruning run(s), 3 sensitivity analysis run(s) -> {tmp_path / 'report'}" in capsys.readouterr().out
    assert (tmp_path / "report" / "sensitivity_lenet300.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["task.layer=conv9"], "task.layer=conv9 is not a prunable layer of this model; choose one of fc1, fc2, fc3"),
        (["task.levels=[-1]"], "task.levels is [-1.0]; it must be >= 0 (each of its values)"),
        (["task.level_kind=kept", "task.levels=[1.5]"], "kept level 1.5 is outside (0, 1]"),
        (
            ["dataset.val_split=0"],
            "a sensitivity analysis evaluates on held-out training data: set dataset.val_split=N",
        ),
        (["dataset.val_split=512"], "dataset.val_split is 512 and dataset.confirm_split 0; together they must leave"),
    ],
)
def test_bad_analysis_settings_are_one_line(tmp_path, overrides, expected):
    with pytest.raises(UserError) as refused:
        run_in_process(tmp_path, *ANALYSIS, *overrides)
    assert str(refused.value).startswith(expected) and "\n" not in str(refused.value)


@pytest.mark.parametrize("saved", ["model.pt", "checkpoints/dense.pt"])
def test_a_model_trained_on_the_validation_images_is_refused(tmp_path, saved):
    run_in_process(tmp_path / "all", *SMOKE, "pruning.iterations=0")  # trained on all 512 training images
    checkpoint = tmp_path / "all" / saved
    with pytest.raises(UserError) as refused:
        run_in_process(tmp_path / "analysis", *ANALYSIS, f"train.checkpoint={checkpoint}")
    assert str(refused.value).startswith(
        f"checkpoint {checkpoint} was trained on synthetic with dataset.val_split=0, so it has seen images of this "
        "run's validation split (dataset.val_split=128)"
    )
    assert not (tmp_path / "analysis").exists() or not any((tmp_path / "analysis").iterdir())  # nothing written


def test_a_model_that_held_out_fewer_images_is_refused_and_one_that_held_out_more_is_not(tmp_path):
    run_in_process(tmp_path / "more", *SMOKE, "pruning.iterations=0", "dataset.val_split=256")
    run_in_process(tmp_path / "analysis", *ANALYSIS, f"train.checkpoint={tmp_path / 'more' / 'model.pt'}")
    assert (tmp_path / "analysis" / "sensitivity.csv").is_file()
    with pytest.raises(UserError, match="was trained on synthetic with dataset.val_split=256"):  # passed on
        run_in_process(
            tmp_path / "fewer",
            *ANALYSIS,
            "dataset.val_split=300",
            f"train.checkpoint={tmp_path / 'analysis' / 'model.pt'}",
        )


def test_a_pruned_model_is_analysed_from_its_surviving_weights(tmp_path):
    run_in_process(
        tmp_path / "pruned", *SMOKE, "dataset.val_split=128", "pruning.iterations=1", "pruning.kept={fc1:0.1}"
    )
    run_in_process(tmp_path / "analysis", *ANALYSIS, f"train.checkpoint={tmp_path / 'pruned' / 'model.pt'}",
                   "task.level_kind=kept", "task.levels=[0.05]", "task.layer=fc1")  # fmt: skip
    points = pd.read_csv(tmp_path / "analysis" / "sensitivity.csv").set_index("layer")
    assert points.kept["fc1"] == pytest.approx(0.05)  # of all 235,200 weights, from the 10% that survive
    assert points.threshold["fc1"] > 0 and points.sensitivity["fc1"] > 0


def test_a_foreign_state_dict_gets_a_warning(dense_checkpoint, tmp_path, caplog):
    foreign = tmp_path / "foreign.pt"
    torch.save(torch.load(dense_checkpoint, weights_only=True), foreign)  # no run.json beside it
    run_in_process(tmp_path / "analysis", *ANALYSIS, f"train.checkpoint={foreign}", "task.levels=[1.0]")
    assert f"{foreign} does not record what it was trained on" in caplog.text
    assert (tmp_path / "analysis" / "sensitivity.csv").is_file()


def test_a_model_continued_from_a_checkpoint_records_every_training_and_a_foreign_one_none(tmp_path):
    run_in_process(tmp_path / "first", *SMOKE, "pruning.iterations=0")  # trained on all 512 images
    continued = [*SMOKE, "pruning.iterations=1", "dataset.val_split=128"]
    run_in_process(tmp_path / "second", *continued, f"train.checkpoint={tmp_path / 'first' / 'model.pt'}")
    assert [entry["val_split"] for entry in read_run_record(tmp_path / "second")["trained_on"]] == [0, 128]
    with pytest.raises(UserError, match="with dataset.val_split=0, so it has seen images"):  # the first training
        run_in_process(tmp_path / "analysis", *ANALYSIS, f"train.checkpoint={tmp_path / 'second' / 'model.pt'}")
    foreign = tmp_path / "foreign.pt"
    torch.save(torch.load(tmp_path / "first" / "model.pt", weights_only=True), foreign)
    run_in_process(tmp_path / "third", *continued, f"train.checkpoint={foreign}")
    assert read_run_record(tmp_path / "third")["trained_on"] is None  # not known, and not claimed
