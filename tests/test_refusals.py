"""Every refusal comes before the run writes its first file: the run directory is left as it was."""

import pytest
import torch
from runs import SMOKE, run_in_process

from pruning_cli.errors import UserError


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Dense LeNet-300-100 models trained on every training image (no validation split) and with 128 held out,
    a LeNet-5 model, and a damaged file."""
    root = tmp_path_factory.mktemp("checkpoints")
    run_in_process(root / "all_images", *SMOKE, "pruning.iterations=0")
    run_in_process(root / "held_out", *SMOKE, "pruning.iterations=0", "dataset.val_split=128")
    run_in_process(root / "lenet5", *SMOKE, "model=lenet5", "pruning.iterations=0", "train.epochs=0")
    (root / "damaged.pt").write_bytes(torch.load.__doc__.encode()[:100])
    return root


AUTO = ["pruning=auto", "dataset.val_split=128", "pruning.end=1"]
REFUSALS = {
    "a bad setting": ([*SMOKE, "pruning=global", "pruning.target=0"], "pruning.target is 0.0; it must be"),
    "a checkpoint of another model": (
        [*SMOKE, "train.checkpoint={root}/lenet5/model.pt"],
        "checkpoint {root}/lenet5/model.pt does not fit model=",
    ),
    "a damaged checkpoint": (
        [*SMOKE, "train.checkpoint={root}/damaged.pt"],
        "checkpoint {root}/damaged.pt cannot be read (UnpicklingError)",
    ),
    "a search on images the checkpoint was trained on": (
        [*SMOKE, *AUTO, "train.checkpoint={root}/all_images/model.pt"],
        "checkpoint {root}/all_images/model.pt was trained on synthetic with dataset.val_split=0, so it has seen",
    ),
    "a sensitivity analysis on images the checkpoint was trained on": (
        [*SMOKE, "task=sensitivity", "dataset.val_split=128", "train.checkpoint={root}/all_images/model.pt"],
        "checkpoint {root}/all_images/model.pt was trained on synthetic with dataset.val_split=0",
    ),
    "a missing data folder": (
        ["dataset=fashion_mnist", "dataset.root={root}/nowhere", "dataset.download=false", "dataset.system_dir=null"],
        "FashionMNIST not found in {root}/nowhere/FashionMNIST/raw (files missing)",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_run_leaves_its_directory_as_it_was(case, checkpoints, tmp_path):
    overrides, message = REFUSALS[case]
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as refused:
        run_in_process(out_dir, *(override.format(root=checkpoints) for override in overrides))
    assert str(refused.value).startswith(message.format(root=checkpoints)) and "\n" not in str(refused.value)
    assert [path.name for path in out_dir.iterdir()] == ["notes.txt"]


def test_a_search_from_a_checkpoint_with_its_own_split_is_allowed(checkpoints, tmp_path):
    overrides = [*SMOKE, *AUTO, f"train.checkpoint={checkpoints}/held_out/model.pt", "pruning.max_steps=1"]
    metrics = run_in_process(tmp_path, *overrides)
    assert metrics.phase.tolist()[0] == "train" and metrics.val_top1.notna().all()


def test_a_checkpoint_that_saw_the_confirmation_images_is_refused(checkpoints, tmp_path):
    """Trained with 128 images held out for validation, the model saw those that a confirmation split takes next."""
    overrides = [*SMOKE, *AUTO, "dataset.confirm_split=64", f"train.checkpoint={checkpoints}/held_out/model.pt"]
    with pytest.raises(UserError) as refused:
        run_in_process(tmp_path, *overrides)
    assert "dataset.val_split=128 dataset.confirm_split=64): train the dense model with" in str(refused.value)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_pretrained_weights_with_a_choice_on_validation_are_warned_about(caplog, tmp_path):
    """torchvision's weights were trained on every ImageNet training image: a split held out from them is not
    unseen. The warning comes before the model is built (here refused: 1,000-class weights for 10 classes)."""
    overrides = ["experiment=alexnet_auto", "dataset=synthetic_imagenet", "dataset.val_split=16"]
    with caplog.at_level("WARNING"), pytest.raises(UserError, match="are for 1000 ImageNet classes"):
        run_in_process(tmp_path, *overrides)
    assert "model.weights=IMAGENET1K_V1 were trained on all of their data set's training images" in caplog.text
