"""pruning=auto: the highest compression within the budget, searched one candidate per retraining phase."""

from dataclasses import replace

import pandas as pd
import pytest
import torch
from runs import SMOKE, pruning_run_in_process
from torch import nn

from pruning_cli.cli import compose_config, one_line
from pruning_cli.data import ImageData, TensorSplit
from pruning_cli.errors import UserError
from pruning_cli.plan import plan_run
from pruning_cli.training.loop import evaluate

AUTO = [*SMOKE, "retrain.epochs=2", "pruning=auto", "dataset.val_split=128", "pruning.candidates=3",
        "pruning.end=1", "pruning.frequency=4"]  # fmt: skip


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("auto")
    return out_dir, pruning_run_in_process(out_dir, *AUTO)


def _rows(metrics: pd.DataFrame) -> list[tuple[int, str]]:
    return list(zip(metrics.iteration, metrics.phase, strict=True))


def _candidates(out_dir) -> list[float]:
    """Each retrained candidate's compression of the prunable weights (metrics.csv's counts biases too)."""
    layers = pd.read_csv(out_dir / "layers.csv")
    retrained = layers[layers.phase == "retrain"].groupby("iteration")[["weights_total", "weights_nonzero"]].sum()
    return (retrained.weights_total / retrained.weights_nonzero).round(2).tolist()


def test_each_candidate_is_a_retraining_row_and_model_pt_is_the_highest_kept(auto_run):
    """The measured curve is in metrics.csv: one retrain row per candidate at its compression; a candidate past
    the budget is followed by a rollback row; model.pt is the highest compression within the budget."""
    out_dir, experiment = auto_run
    metrics = pd.read_csv(out_dir / "metrics.csv")
    candidates = metrics[metrics.phase == "retrain"]
    assert len(candidates) == 3 and _candidates(out_dir)[0] == 8
    rolled_back = set(metrics[metrics.phase == "rollback"].iteration)
    kept = candidates[~candidates.iteration.isin(rolled_back)]
    expected = kept.iloc[kept.compression.argmax()] if len(kept) else metrics.iloc[0]
    assert experiment.kept_iteration == expected.iteration
    state = torch.load(out_dir / "model.pt", weights_only=True)
    assert sum(int(torch.count_nonzero(value)) for value in state.values()) == expected.params_nonzero


def test_with_room_in_the_budget_the_candidates_grow_from_the_last_one_kept(tmp_path):
    experiment = pruning_run_in_process(tmp_path, *AUTO, "pruning.budget=100")  # every candidate within it
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert _rows(metrics)[1:] == [(i, phase) for i in (1, 2, 3) for phase in ("prune", "retrain")]
    retrained = metrics[metrics.phase == "retrain"]
    assert _candidates(tmp_path) == [8, 16, 32]  # pruning.first, times pruning.growth
    pruned = metrics[metrics.phase == "prune"]
    assert (pruned.params_nonzero.iloc[1:].values == retrained.params_nonzero.iloc[:-1].values).all()  # continued
    assert experiment.kept_iteration == 3


PAST = ["pruning.budget=0", "pruning.first=100", "pruning.min_kept=0"]  # 100x loses images a budget of 0 cannot afford


def test_a_candidate_past_the_budget_is_rolled_back_and_the_search_halves_the_step(tmp_path):
    """The first candidate, at 100x, is past the budget: rolled back to the dense model, the next candidate is
    halfway there in log-compression, 10x, again from the dense model."""
    pruning_run_in_process(tmp_path, *AUTO, *PAST, "pruning.candidates=2")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert _rows(metrics)[1:4] == [(1, "prune"), (1, "retrain"), (1, "rollback")]
    assert metrics.params_nonzero.iloc[3] == metrics.params_total.iloc[0]  # back to the dense model
    assert _candidates(tmp_path) == [100, 10]
    assert metrics[metrics.phase == "prune"].params_nonzero.iloc[1] == metrics.params_total.iloc[0]


def test_when_no_candidate_is_within_the_budget_model_pt_is_the_dense_model(tmp_path):
    experiment = pruning_run_in_process(tmp_path, *AUTO, *PAST, "pruning.candidates=1")
    assert experiment.kept_iteration == 0 and experiment.stopped
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
    assert (honest.kept_iteration, honest.stopped) == (scrambled.kept_iteration, scrambled.stopped)
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
        (["pruning.growth=1"], "pruning.growth is 1.0; it must be > 1, e.g. pruning.growth=2.0, its default"),
        (["pruning.first=0.5"], "pruning.first is 0.5; it must be > 1"),
        (["pruning.candidates=0"], "pruning.candidates is 0; it must be >= 1, e.g. pruning.candidates=8"),
        (["pruning.end=3"], "pruning.start is 0.0 and pruning.end 3.0: pruning must start before it ends, within"),
        (["pruning.allocation=random"], "pruning.allocation is random; choose one of global, lamp, uniform, paper"),
    ],
)
def test_bad_auto_settings_are_one_line(overrides, expected):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*AUTO, *overrides))
    assert str(refused.value).startswith(expected) and "\n" not in str(refused.value)


def test_an_unknown_restart_is_refused_with_its_choices():
    with pytest.raises(Exception) as refused:
        compose_config(*AUTO, "pruning.restart=random")
    assert one_line(refused.value) == (
        "Error merging override pruning.restart=random: Invalid value 'random', expected one of [kept, dense]"
    )


def test_quantization_after_a_rollback_quantizes_the_model_that_was_kept(tmp_path):
    pruning_run_in_process(tmp_path, *AUTO, *PAST, "pruning.candidates=1", "quantize=kmeans", "quantize.epochs=1")
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
