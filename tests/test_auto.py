"""pruning=auto: every layer's sensitivity chosen on the validation split, iterations while within the budget."""

from dataclasses import replace

import pandas as pd
import pytest
import torch
from runs import SMOKE, pruning_run_in_process
from torch import nn

from pruning_cli.cli import compose_config
from pruning_cli.data import ImageData, TensorSplit
from pruning_cli.errors import UserError
from pruning_cli.plan import plan_run
from pruning_cli.training.loop import evaluate

AUTO = [*SMOKE, "pruning=auto", "dataset.val_split=128", "pruning.iterations=3", "pruning.budget=3"]


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("auto")
    return out_dir, pruning_run_in_process(out_dir, *AUTO)


def test_each_iteration_prunes_at_sensitivities_chosen_from_the_levels_and_stays_within_the_budget(auto_run):
    out_dir, experiment = auto_run
    metrics = pd.read_csv(out_dir / "metrics.csv")
    layers = pd.read_csv(out_dir / "layers.csv")
    chosen = layers[layers.phase == "prune"].dropna(subset=["threshold"])
    assert not chosen.empty and chosen.sensitivity.round(6).isin([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]).all()
    final = metrics.iloc[-1]
    assert final.phase in ("retrain", "rollback") and final.compression > 2
    assert final.val_top1 >= metrics.val_top1.iloc[0] - 0.03  # the budget: 3 points of validation top-1
    state = torch.load(out_dir / "model.pt", weights_only=True)
    nonzero = sum(int(torch.count_nonzero(value)) for value in state.values())
    assert nonzero == final.params_nonzero  # model.pt is the run's last row


GREEDY = ["pruning.budget=0", "pruning.layer_budget=100", "pruning.levels=[2.0]", "retrain.epochs=0"]


def test_an_iteration_past_the_budget_is_rolled_back_to_the_last_model_within_it(tmp_path):
    experiment = pruning_run_in_process(tmp_path, *AUTO, *GREEDY, "pruning.patience=1")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(zip(metrics.iteration, metrics.phase, strict=True)) == [
        (0, "train"), (1, "prune"), (1, "retrain"), (1, "rollback"),
    ]  # fmt: skip
    assert metrics.val_top1.iloc[2] < metrics.val_top1.iloc[0]  # pruned at 2 std, not retrained: past a budget of 0
    assert metrics.params_nonzero.iloc[-1] == metrics.params_total.iloc[-1]  # back to the dense model
    dense = torch.load(tmp_path / "checkpoints" / "dense.pt", weights_only=True)["model"]
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(final[key], dense[key]) for key in dense)
    assert experiment.stopped and experiment.kept_iteration == 0


def test_the_search_goes_on_from_the_kept_model_with_smaller_steps_until_patience_runs_out(tmp_path):
    experiment = pruning_run_in_process(tmp_path, *AUTO, *GREEDY, "pruning.patience=2", "pruning.backoff=0.5")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    rows = list(zip(metrics.iteration, metrics.phase, strict=True))
    assert rows[1:] == [(i, phase) for i in (1, 2) for phase in ("prune", "retrain", "rollback")]
    assert (metrics.params_nonzero.iloc[[3, 6]] == metrics.params_total.iloc[0]).all()  # each back to dense
    assert experiment.stopped and experiment.pruning.progress.rollbacks == 2
    # The retry never repeats the step just rolled back (the same masks): at 50 points it still chose fc1, fc2 and
    # fc3 at 2 std, so the budget halved again until fc1 dropped out; then the second rollback halved it a third time.
    layers = pd.read_csv(tmp_path / "layers.csv")
    tried = [
        set(step.dropna(subset=["threshold"]).layer) for _, step in layers[layers.phase == "prune"].groupby("iteration")
    ]
    assert tried[0] == {"fc1", "fc2", "fc3"} and tried[1] and tried[1] < tried[0]
    assert experiment.pruning.progress.layer_budget == pytest.approx(1.0 * 0.5**3)  # 100 points, halved three times


def test_a_smaller_step_after_a_rollback_is_kept(tmp_path):
    """A step past the budget is rolled back; the next, at a layer budget cut a thousandfold, prunes only what
    costs no validation image, and is kept: model.pt is that later model, not the dense one."""
    settings = ["pruning.budget=1", "pruning.layer_budget=100", "pruning.levels=[0.25,2.0]", "retrain.epochs=0"]
    experiment = pruning_run_in_process(tmp_path, *AUTO, *settings, "pruning.backoff=0.001", "pruning.iterations=2")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(zip(metrics.iteration, metrics.phase, strict=True))[1:] == [
        (1, "prune"), (1, "retrain"), (1, "rollback"), (2, "prune"), (2, "retrain"),
    ]  # fmt: skip
    assert metrics.val_top1.iloc[2] < metrics.val_top1.iloc[0] - 0.01 <= metrics.val_top1.iloc[-1]
    assert metrics.params_nonzero.iloc[-1] < metrics.params_total.iloc[-1]
    assert (experiment.kept_iteration, experiment.pruning.progress.rollbacks, experiment.stopped) == (2, 0, False)
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert sum(int(torch.count_nonzero(value)) for value in final.values()) == metrics.params_nonzero.iloc[-1]


def test_scrambled_test_labels_change_no_choice(auto_run, tmp_path):
    out_dir, honest = auto_run

    def scramble(data: ImageData) -> ImageData:
        labels = data.test.labels[torch.randperm(len(data.test), generator=torch.Generator().manual_seed(1))]
        return replace(data, test=TensorSplit(data.test.images, (labels + 1) % data.num_classes))

    scrambled = pruning_run_in_process(tmp_path, *AUTO, transform_data=scramble)
    assert all(torch.equal(honest.masks[name], scrambled.masks[name]) for name in honest.masks)
    assert (honest.kept_iteration, honest.stopped) == (scrambled.kept_iteration, scrambled.stopped)
    ours, theirs = pd.read_csv(out_dir / "layers.csv"), pd.read_csv(tmp_path / "layers.csv")
    pd.testing.assert_series_equal(ours.sensitivity, theirs.sensitivity)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset.val_split=0"], "pruning=auto chooses on held-out training data: set dataset.val_split=N"),
        (["pruning.budget=-1"], "pruning.budget is -1.0; it must be >= 0, e.g. pruning.budget=0.3, its default"),
        (["pruning.levels=[]"], "pruning.levels is empty"),
        (["pruning.backoff=0"], "pruning.backoff is 0.0; it must be in (0, 1), e.g. pruning.backoff=0.5"),
        (["pruning.backoff=1"], "pruning.backoff is 1.0; it must be in (0, 1)"),  # a rolled-back step never changes
        (["pruning.patience=0"], "pruning.patience is 0; it must be >= 1, e.g. pruning.patience=3, its default"),
    ],
)
def test_bad_auto_settings_are_one_line(overrides, expected):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*AUTO, *overrides))
    assert str(refused.value).startswith(expected)


def test_quantization_after_a_rollback_quantizes_the_model_that_was_kept(tmp_path):
    pruning_run_in_process(tmp_path, *AUTO, *GREEDY, "pruning.patience=1", "quantize=kmeans", "quantize.epochs=1")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(zip(metrics.iteration, metrics.phase, strict=True))[-2:] == [(1, "rollback"), (0, "quantize")]
    assert metrics.params_nonzero.iloc[-1] == metrics.params_total.iloc[-1]  # the dense model, now quantized
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(final[f"{layer}.weight"].unique().numel() <= 31 for layer in ("fc1", "fc2", "fc3"))


def test_a_loss_of_exactly_the_budget_is_within_it():
    plan = plan_run(compose_config(*AUTO, "pruning.budget=0.3")).policy
    assert plan.within_budget(4475 / 5000, 4490 / 5000)  # 89.50% against 89.80%: 0.3 points, in floating point
    assert not plan.within_budget(4474 / 5000, 4490 / 5000)


def test_validation_accuracy_is_an_exact_fraction_of_the_images():
    """4,475 of 5,000 right is 0.895 exactly: a float32 quotient (0.89499998) fell below a budget it met."""
    labels = torch.arange(5000) % 10
    predicted = torch.where(torch.arange(5000) < 4475, labels, (labels + 1) % 10)
    images = nn.functional.one_hot(predicted, 10).float()
    assert evaluate(nn.Identity(), TensorSplit(images, labels)).top1 == 0.895


def test_a_confirmation_split_is_reported_and_poisoning_its_labels_changes_no_decision(auto_run, tmp_path):
    """dataset.confirm_split holds out images after the validation ones: every row reports them, no choice reads
    them (scrambled, the search takes the same steps), and the validation images stay those of a run without it."""
    _, without = auto_run
    confirmed = [*AUTO, "dataset.confirm_split=128"]
    honest = pruning_run_in_process(tmp_path / "honest", *confirmed)

    def poison(data: ImageData) -> ImageData:
        labels = (data.confirm.labels + 1) % data.num_classes
        return replace(data, confirm=TensorSplit(data.confirm.images, labels))

    poisoned = pruning_run_in_process(tmp_path / "poisoned", *confirmed, transform_data=poison)
    assert all(torch.equal(honest.masks[name], poisoned.masks[name]) for name in honest.masks)
    ours, theirs = (pd.read_csv(tmp_path / run / "metrics.csv") for run in ("honest", "poisoned"))
    assert ours.confirm_top1.notna().all() and (theirs.confirm_top1 < 0.2).all()  # every label wrong there
    pd.testing.assert_frame_equal(ours.drop(columns=["confirm_top1", "confirm_loss", "seconds"]),
                                  theirs.drop(columns=["confirm_top1", "confirm_loss", "seconds"]))  # fmt: skip
    assert torch.equal(honest.data.val.images, without.data.val.images)  # the validation images stay the same
    assert len(honest.data.train) == len(without.data.train) - 128
