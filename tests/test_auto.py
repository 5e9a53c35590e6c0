"""pruning=auto through the real run: one walk of fixed walk steps, each tested against the dense model on the
validation split; metrics.csv holds each test's figures, model.pt the last walk step within the budget."""

from dataclasses import replace

import pandas as pd
import pytest
import torch
from runs import SMOKE, compose_config, pruning_run_in_process
from torch import nn

from pruning_cli.data import ImageData, TensorSplit
from pruning_cli.errors import UserError
from pruning_cli.pruning.paired import tango_upper_bound
from pruning_cli.run.plan import plan_run
from pruning_cli.training.loop import evaluate

AUTO = [
    *SMOKE, "retrain.epochs=2", "pruning=auto", "dataset.val_split=128", "pruning.max_steps=3", "pruning.end=1",
    "pruning.frequency=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("auto")
    return out_dir, pruning_run_in_process(out_dir, *AUTO)


def _rows(metrics: pd.DataFrame) -> list[tuple[int, str]]:
    return list(zip(metrics.iteration, metrics.phase, strict=True))


def _walk_steps(out_dir) -> list[float]:
    """Each retrained walk step's compression of the prunable weights (metrics.csv's counts biases too)."""
    layers = pd.read_csv(out_dir / "layers.csv")
    retrained = layers[layers.phase == "retrain"].groupby("iteration")[["weights_total", "weights_nonzero"]].sum()
    return (retrained.weights_total / retrained.weights_nonzero).round(2).tolist()


def test_each_walk_steps_test_is_in_metrics_csv_and_model_pt_is_the_last_within(auto_run):
    """Every retraining row holds its walk step's test, checked here from the validation top-1 columns and an
    independent call of the bound: lost - gained is the validation images the dense model's top-1 has over it."""
    out_dir, experiment = auto_run
    metrics = pd.read_csv(out_dir / "metrics.csv")
    steps, dense = metrics[metrics.phase == "retrain"], metrics.iloc[0]
    assert len(steps) >= 1 and _walk_steps(out_dir)[0] == 8
    images = 128
    assert ((steps.val_lost - steps.val_gained) == ((dense.val_top1 - steps.val_top1) * images).round()).all()
    assert steps.val_drop.tolist() == pytest.approx(((steps.val_lost - steps.val_gained) / images).tolist(), abs=1e-7)
    bounds = tango_upper_bound(torch.tensor(steps.val_lost.values), torch.tensor(steps.val_gained.values), images, 0.8)
    assert steps.val_bound.tolist() == pytest.approx(bounds.tolist(), abs=1e-7)
    assert steps.verdict.tolist() == ["within" if bound <= 0.003 else "past" for bound in bounds.tolist()]
    within = steps[steps.verdict == "within"]
    assert list(steps.verdict[:-1]) == ["within"] * (len(steps) - 1)  # the walk ends at its first step past
    assert experiment.progress.kept_iteration == (within.iteration.max() if len(within) else 0)
    kept = within.iloc[-1] if len(within) else dense
    state = torch.load(out_dir / "model.pt", weights_only=True)
    assert sum(int(torch.count_nonzero(value)) for value in state.values()) == kept.params_nonzero


def test_with_room_in_the_budget_the_walk_takes_every_step_it_was_given(tmp_path):
    experiment = pruning_run_in_process(tmp_path, *AUTO, "pruning.budget=100")  # every walk step within it
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert _rows(metrics)[1:] == [(i, phase) for i in (1, 2, 3) for phase in ("prune", "retrain")]
    retrained = metrics[metrics.phase == "retrain"]
    assert _walk_steps(tmp_path) == [8, 10, 12.5]  # pruning.first, times pruning.ratio
    pruned = metrics[metrics.phase == "prune"]
    assert (pruned.params_nonzero.iloc[1:].values == retrained.params_nonzero.iloc[:-1].values).all()  # continued
    assert experiment.progress.kept_iteration == 3 and (retrained.verdict == "within").all()


PAST = ["pruning.budget=0", "pruning.first=100", "pruning.min_kept=0"]  # 100x loses images a budget of 0 cannot afford


def test_a_first_walk_step_past_the_budget_ends_the_walk_on_the_dense_model(tmp_path):
    """100x is past a budget of 0: rolled back to the dense model, and no second try at any compression."""
    experiment = pruning_run_in_process(tmp_path, *AUTO, *PAST)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert _rows(metrics)[1:] == [(1, "prune"), (1, "retrain"), (1, "rollback")]
    assert metrics.verdict.iloc[2] == "past" and metrics.params_nonzero.iloc[3] == metrics.params_total.iloc[0]
    assert experiment.progress.kept_iteration == 0 and experiment.progress.stopped
    dense = torch.load(tmp_path / "checkpoints" / "dense.pt", weights_only=True)["model"]
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(final[key], dense[key]) for key in dense)


def test_scrambled_test_labels_change_no_choice(auto_run, tmp_path):
    out_dir, honest = auto_run

    def scramble(data: ImageData) -> ImageData:
        labels = data.test.labels[torch.randperm(len(data.test), generator=torch.Generator().manual_seed(1))]
        return replace(data, test=TensorSplit(data.test.images, (labels + 1) % data.num_classes))

    scrambled = pruning_run_in_process(tmp_path, *AUTO, transform_data=scramble)
    assert all(torch.equal(honest.masks[name], scrambled.masks[name]) for name in honest.masks)
    assert (honest.progress.kept_iteration, honest.progress.stopped) == (
        scrambled.progress.kept_iteration,
        scrambled.progress.stopped,
    )
    ours, theirs = pd.read_csv(out_dir / "metrics.csv"), pd.read_csv(tmp_path / "metrics.csv")
    pd.testing.assert_series_equal(ours.params_nonzero, theirs.params_nonzero)
    pd.testing.assert_series_equal(ours.val_top1, theirs.val_top1)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset.val_split=0"], "pruning=auto chooses on held-out training data: set dataset.val_split=N"),
        (["pruning.budget=-1"], "pruning.budget is -1.0; it must be >= 0, e.g. pruning.budget=0.3, its default"),
        (["pruning.confidence=1"], "pruning.confidence is 1.0; it must be in [0.5, 1), e.g. pruning.confidence=0.8"),
        (["pruning.confidence=0.3"], "pruning.confidence is 0.3; it must be in [0.5, 1)"),
        (["pruning.ratio=1"], "pruning.ratio is 1.0; it must be > 1, e.g. pruning.ratio=1.25, its default"),
        (["pruning.ratio=0.8"], "pruning.ratio is 0.8; it must be > 1"),
        (["pruning.first=0.5"], "pruning.first is 0.5; it must be > 1"),
        (["pruning.max_steps=0"], "pruning.max_steps is 0; it must be >= 1, e.g. pruning.max_steps=20"),
        (["pruning.end=3"], "pruning.start is 0.0 and pruning.end 3.0: pruning must start before it ends, within"),
        (["pruning.sharing=random"], "pruning.sharing is random; choose one of global, uniform, paper"),
        (["pruning.scoring=random"], "pruning.scoring is random; choose one of magnitude, lamp"),
    ],
)
def test_bad_auto_settings_are_one_line(overrides, expected):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*AUTO, *overrides))
    assert str(refused.value).startswith(expected) and "\n" not in str(refused.value)


def test_quantization_after_a_rollback_quantizes_the_model_that_was_kept(tmp_path):
    pruning_run_in_process(tmp_path, *AUTO, *PAST, "quantize=kmeans", "quantize.epochs=1")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert _rows(metrics)[-2:] == [(1, "rollback"), (0, "quantize")]
    assert metrics.params_nonzero.iloc[-1] == metrics.params_total.iloc[-1]  # the dense model, now quantized
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(final[f"{layer}.weight"].unique().numel() <= 31 for layer in ("fc1", "fc2", "fc3"))


def test_validation_accuracy_is_an_exact_fraction_of_the_images():
    """4,475 of 5,000 right is 0.895 exactly: a float32 quotient (0.89499998) fell below a budget it met."""
    labels = torch.arange(5000) % 10
    predicted = torch.where(torch.arange(5000) < 4475, labels, (labels + 1) % 10)
    images = nn.functional.one_hot(predicted, 10).float()
    assert evaluate(nn.Identity(), TensorSplit(images, labels)).top1 == 0.895


def test_a_confirmation_split_is_reported_and_poisoning_its_labels_changes_no_decision(auto_run, tmp_path):
    """dataset.confirm_split holds out images after the validation ones: every row reports them, no choice reads
    them (scrambled, the walk takes the same steps), and the validation images stay those of a run without it."""
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
    unread = ["confirm_top1", "confirm_loss", "seconds"]
    pd.testing.assert_frame_equal(ours.drop(columns=unread), theirs.drop(columns=unread))
    assert torch.equal(honest.data.val.images, without.data.val.images)  # the validation images stay the same
    assert len(honest.data.train) == len(without.data.train) - 128
