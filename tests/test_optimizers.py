"""The optimizer group: SGD (the paper's, every recipe's) or AdamW, and masks that hold under either: a pruned weight
stays exactly zero, and so does AdamW's state for it. The scheduler group: cosine (every recipe's), step, constant."""

import math
from dataclasses import replace
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch
from runs import SMOKE, compose_config, run_in_process, without_wall_time
from torch import nn

from pruning_cli.config.schema import PhaseConfig
from pruning_cli.data.tensors import TensorSplit
from pruning_cli.errors import UserError
from pruning_cli.run.plan import plan_run
from pruning_cli.run.pruning_run import run
from pruning_cli.training.loop import MaskedWeights, PhaseExecution, StopRequested, train_phase


def test_fifty_adamw_steps_keep_pruned_weights_and_their_moments_at_zero():
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(20, 5)
    mask = torch.rand(layer.weight.shape, generator=generator) > 0.7
    with torch.no_grad():
        layer.weight.mul_(mask)
    data = TensorSplit(torch.randn(100, 20, generator=generator), torch.randint(5, (100,), generator=generator))
    phase = PhaseConfig(epochs=5, batch_size=10, lr=0.01, weight_decay=0.1)  # 5 x 10 = 50 steps
    settings = plan_run(compose_config(*SMOKE, "optimizer=adamw", "scheduler=constant")).settings
    adamw, built = settings.optimization.optimizer, []

    class Kept(adamw.func):  # the run's own optimizer and arguments; the test keeps the instance to read its state
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    execution = PhaseExecution(
        torch.Generator().manual_seed(1),
        "test",
        optimization=replace(settings.optimization, optimizer=partial(Kept, **adamw.keywords)),
    )
    train_phase(layer, data, phase, MaskedWeights([layer.weight], [mask]), execution)
    state = built[0].state[layer.weight]
    assert len(built) == 1 and int(state["step"]) == 50
    assert torch.all(layer.weight[~mask] == 0) and torch.all(layer.weight[mask] != 0)
    assert torch.all(state["exp_avg"][~mask] == 0) and torch.all(state["exp_avg_sq"][~mask] == 0)
    assert torch.all(state["exp_avg_sq"][mask] > 0)  # the survivors did train


def test_sgd_is_the_default_and_adamw_a_choice_with_its_own_arguments():
    sgd, adamw = compose_config(*SMOKE), compose_config(*SMOKE, "optimizer=adamw")
    assert (sgd.optimizer.name, sgd.optimizer._target_) == ("sgd", "torch.optim.SGD")
    built = plan_run(adamw).settings.optimization.optimizer([nn.Parameter(torch.zeros(2))], lr=0.1, weight_decay=0.01)
    assert isinstance(built, torch.optim.AdamW) and built.defaults["betas"] == (0.9, 0.999)
    assert built.defaults["weight_decay"] == 0.01


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "optimizer._target_=torch.nn.Linear",
            "optimizer._target_=torch.nn.Linear names no torch optimizer class; choose optimizer=sgd or adamw, or give "
            "an import path such as torch.optim.Adam",
        ),
        (
            "scheduler._target_=torch.optim.SGD",
            "scheduler._target_=torch.optim.SGD names no torch learning-rate scheduler class; choose "
            "scheduler=cosine, step or constant, or give an import path such as torch.optim.lr_scheduler.LinearLR",
        ),
    ],
)
def test_an_import_path_of_the_wrong_kind_is_refused_in_one_line(override, message):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*SMOKE, override))
    assert str(refused.value) == message


def test_a_run_with_adamw_trains_and_keeps_its_masks(tmp_path):
    sgd = run_in_process(tmp_path / "sgd", *SMOKE)
    adamw = run_in_process(tmp_path / "adamw", *SMOKE, "optimizer=adamw")
    pruned, retrained = (adamw[adamw.phase == phase].params_nonzero.tolist() for phase in ("prune", "retrain"))
    assert pruned == retrained and retrained[-1] < adamw.params_total.iloc[0]  # retraining revives no weight
    assert not sgd.top1.equals(adamw.top1)  # another optimizer trained it
    state = torch.load(tmp_path / "adamw" / "model.pt", weights_only=True)
    assert sum(int(torch.count_nonzero(value)) for value in state.values()) == adamw.params_nonzero.iloc[-1]


def test_sgd_chosen_by_name_gives_todays_numbers_exactly(tmp_path):
    run_in_process(tmp_path / "default", *SMOKE)
    run_in_process(tmp_path / "named", *SMOKE, "optimizer=sgd")
    pd.testing.assert_frame_equal(
        without_wall_time(tmp_path / "default" / "metrics.csv"), without_wall_time(tmp_path / "named" / "metrics.csv")
    )


SCHEDULE_RUN = [
    *SMOKE,
    "model=lenet300",
    "train.epochs=4",
    "train.lr=0.1",
    "pruning.iterations=1",
    "retrain.epochs=3",
    "retrain.lr=0.04",
]


def _learning_rates(out_dir: Path, *overrides: str) -> list[float]:
    """The dense phase's learning rate after each of its 4 epochs (epochs.csv)."""
    run_in_process(out_dir, *SCHEDULE_RUN, *overrides)
    epochs = pd.read_csv(out_dir / "epochs.csv")
    return epochs[epochs.phase == "train"].lr.tolist()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], [0.1 * (1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(1, 5)]),  # cosine, per step
        (["scheduler=step", "scheduler.args.step_size=1", "scheduler.args.gamma=0.5"], [0.05, 0.025, 0.0125, 0.00625]),
        (["scheduler=constant"], [0.1] * 4),
    ],
    ids=["cosine", "step", "constant"],
)
def test_each_schedule_sets_the_learning_rate_its_formula_gives(overrides, expected, tmp_path):
    assert _learning_rates(tmp_path, *overrides) == pytest.approx(expected, rel=1e-6, abs=1e-12)  # as epochs.csv rounds


def test_a_run_stopped_mid_phase_resumes_on_its_schedule(tmp_path):
    overrides = [*SCHEDULE_RUN, "scheduler=step", "scheduler.args.step_size=2", "scheduler.args.gamma=0.5"]
    uninterrupted, stopped = tmp_path / "uninterrupted", tmp_path / "stopped"
    run_in_process(uninterrupted, *overrides)

    def after_one_retraining_epoch() -> bool:
        epochs = stopped / "epochs.csv"
        return epochs.is_file() and len(pd.read_csv(epochs)) == 5

    with pytest.raises(StopRequested):
        run(compose_config(*overrides), stopped, stop_requested=after_one_retraining_epoch)
    run(compose_config(*overrides), stopped)
    resumed, expected = (without_wall_time(path / "epochs.csv") for path in (stopped, uninterrupted))
    pd.testing.assert_frame_equal(resumed, expected)
    assert resumed.lr.tolist()[4:] == pytest.approx([0.04, 0.02, 0.02])  # 0.04, halved every 2 epochs
