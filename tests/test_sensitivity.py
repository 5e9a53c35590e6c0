"""Sensitivity analysis both ways (one process, Hydra multirun) on generated data, and the activation counts."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from test_cli import SMOKE, prune_run
from torch import nn

from pruning_cli.config import LevelKind
from pruning_cli.data.tensors import TensorSplit
from pruning_cli.sensitivity import layer_sensitivity
from pruning_cli.training.activations import InputDensity

ANALYSIS = [*SMOKE, "model=lenet300", "pruning=sensitivity", "dataset.val_split=128"]


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
    rows = pd.DataFrame(layer_sensitivity(model, weights, data, [0.0, 1.0, 100.0], LevelKind.sensitivity, 16))
    assert rows.layer.tolist() == ["none", "fc1", "fc1", "fc1", "fc2", "fc2", "fc2"]
    fc1 = rows[rows.layer == "fc1"]
    assert fc1.kept.tolist() == [
        1.0,
        pytest.approx((before["0.weight"].abs() >= before["0.weight"].std()).float().mean().item()),
        0.0,
    ]
    assert fc1.threshold.tolist() == pytest.approx(
        [0.0, before["0.weight"].std().item(), 100 * before["0.weight"].std().item()]
    )
    assert rows.top1.iloc[1] == rows.top1.iloc[0]  # level 0 prunes nothing
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("dense")
    result = prune_run(*SMOKE, "pruning.iterations=0", "dataset.val_split=128", f"hydra.run.dir={out_dir}", cwd=out_dir)
    assert result.returncode == 0, result.stderr
    return out_dir / "model.pt"


def test_in_process_and_multirun_give_the_same_points(dense_checkpoint, tmp_path):
    single = tmp_path / "single"
    result = prune_run(
        *ANALYSIS, f"train.checkpoint={dense_checkpoint}", "pruning.levels=[0.5,1.5]", f"hydra.run.dir={single}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    in_process = pd.read_csv(single / "sensitivity.csv")
    assert len(in_process) == 1 + 3 * 2 and set(in_process.layer) == {"none", "fc1", "fc2", "fc3"}
    assert (in_process.groupby("layer").kept.diff().dropna() < 0).all()  # a higher level keeps fewer weights

    sweep = tmp_path / "sweep"
    result = prune_run(
        "-m", *ANALYSIS, f"train.checkpoint={dense_checkpoint}", "pruning.layer=fc1,fc3", "pruning.sensitivity=0.5,1.5",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    jobs = pd.concat(pd.read_csv(path) for path in sorted(sweep.glob("*/sensitivity.csv")))
    points = jobs[jobs.layer != "none"].sort_values(["layer", "sensitivity"]).reset_index(drop=True)
    expected = in_process[in_process.layer.isin(["fc1", "fc3"])].sort_values(["layer", "sensitivity"])
    pd.testing.assert_frame_equal(points, expected.reset_index(drop=True))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["pruning.layer=conv9"],
            "pruning.layer=conv9 is not a prunable layer of this model; choose one of fc1, fc2, fc3",
        ),
        (["pruning.levels=[-1]"], "sensitivity level -1.0 is negative"),
        (["pruning.level_kind=kept", "pruning.levels=[1.5]"], "kept level 1.5 is outside (0, 1]"),
        (
            ["dataset.val_split=0"],
            "a sensitivity analysis evaluates on held-out training data: set dataset.val_split=N",
        ),
        (["dataset.val_split=512"], "dataset.val_split is 512; it must be >= 0 and leave training data"),
    ],
)
def test_bad_analysis_settings_are_one_line(tmp_path, overrides, expected):
    result = prune_run(*ANALYSIS, *overrides, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr and result.stderr.count("\n") == 1
