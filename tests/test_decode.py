"""The on-device decoding path of image folders (data/decode.py), run on the CPU: the same labels, shapes and
transforms' semantics as the PIL path, and run.json says which path a run used."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from runs import compose_config, run_in_process
from torch import nn

from pruning_cli.config.schema import PhaseConfig
from pruning_cli.data import decoding, load_data
from pruning_cli.data.imagenet import eval_transform, load_imagenet
from pruning_cli.data.tensors import VALIDATION_SPLIT_SEED, hold_out_validation
from pruning_cli.training.loop import MaskedWeights, PhaseExecution, train_phase


def _folder(root: Path, fmt: str = "JPEG") -> Path:
    generator = torch.Generator().manual_seed(0)
    for split, count in {"train": 4, "val": 3}.items():
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                pixels = torch.randint(256, (40 + 7 * index, 52, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / label / f"{index}.{fmt.lower()}", format=fmt)
    return root


def test_the_decoded_path_gives_the_pil_paths_labels_shapes_and_near_values(tmp_path):
    root = _folder(tmp_path / "images")
    pil = load_imagenet(root, num_workers=0, seed=0, size=32)
    decoded = load_imagenet(root, num_workers=0, seed=0, size=32, on_device=True)
    assert (len(decoded.train), len(decoded.test), decoded.num_classes) == (8, 6, 2)
    (ours, our_labels), (theirs, their_labels) = (next(data.test.batches(6)) for data in (decoded, pil))
    assert torch.equal(our_labels, their_labels) and ours.shape == theirs.shape == (6, 3, 32, 32)
    assert ours.dtype == torch.float32 and (ours - theirs).abs().mean() < 0.05  # resize + centre crop, two libraries
    images, labels = next(decoded.train.batches(8, torch.Generator().manual_seed(1)))
    assert images.shape == (8, 3, 32, 32) and sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_png_files_are_decoded_too_and_a_model_trains_on_the_decoded_batches(tmp_path):
    root = _folder(tmp_path / "images", fmt="PNG")
    data = load_imagenet(root, num_workers=1, seed=0, size=16, on_device=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.Flatten(), nn.Linear(64, 2))
    masked = MaskedWeights([model[0].weight], [torch.ones_like(model[0].weight, dtype=torch.bool)])
    loss = train_phase(
        model, data.train, PhaseConfig(epochs=1, batch_size=4), masked, PhaseExecution(torch.Generator(), "test")
    )
    assert loss == loss and loss > 0
    assert decoding(data).startswith("on cpu (JPEG batches by torchvision.io.decode_jpeg, other files by PIL")


def test_cmyk_jpegs_and_other_formats_are_read_as_the_pil_path_reads_them(tmp_path):
    """A CMYK JPEG (which nvJPEG refuses), a BMP and a grayscale JPEG in one folder: the same RGB pixels as PIL's."""
    for split in ("train", "val"):
        folder = tmp_path / split / "a"
        folder.mkdir(parents=True)
        pixels = torch.randint(256, (24, 24, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy()
        Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.jpg", format="JPEG", quality=95)
        Image.fromarray(pixels).save(folder / "plain.bmp", format="BMP")
        Image.fromarray(pixels[:, :, 0]).save(folder / "gray.jpg", format="JPEG", quality=95)
    decoded = load_imagenet(tmp_path, num_workers=0, seed=0, size=24, on_device=True).test
    files = [Path(path).read_bytes() for path, _ in decoded.files.dataset.samples]
    for image, path in zip(decoded._decoded(files), decoded.files.dataset.samples, strict=True):
        with Image.open(path[0]) as reference:
            expected = torch.from_numpy(np.asarray(reference.convert("RGB")).copy()).permute(2, 0, 1)
        assert image.shape == expected.shape and (image.int() - expected.int()).abs().max() <= 2, path[0]
    images, _ = next(decoded.batches(3))
    assert images.shape == (3, 3, 24, 24)


def test_run_json_says_where_the_images_were_decoded(tmp_path):
    root = _folder(tmp_path / "images")
    overrides = ["model=torchvision", "model.arch=mobilenet_v3_small", "dataset=image_folder", f"dataset.root={root}",
                 "dataset.size=32", "dataset.num_workers=0", "train.epochs=1", "retrain.epochs=0",
                 "pruning.iterations=1", "train.batch_size=4"]  # fmt: skip
    run_in_process(tmp_path / "run", *overrides)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["runtime"]["decode"] == "PIL in DataLoader workers"
    data = load_data(compose_config("dataset=synthetic").dataset, (1, 28, 28), 0)
    assert decoding(data) == "in memory"


@pytest.mark.parametrize("on_device", [False, True], ids=["pil", "decoded"])
def test_held_out_splits_are_read_as_evaluation_reads_them_the_training_split_augmented(tmp_path, on_device):
    """A validation split drawn from the training images is centre-cropped, not randomly augmented: a decision sees
    the same images every time, those the evaluation transform gives; the training images still vary."""
    root = _folder(tmp_path / "images")
    loaded = load_imagenet(root, num_workers=0, seed=0, size=32, on_device=on_device)
    data = hold_out_validation(loaded, 3, 2)
    first, second = (next(data.val.batches(3))[0] for _ in range(2))
    assert torch.equal(first, second) and torch.equal(*(next(data.confirm.batches(2))[0] for _ in range(2)))
    order = torch.randperm(8, generator=torch.Generator().manual_seed(VALIDATION_SPLIT_SEED))[:3]
    samples = (loaded.train.files if on_device else loaded.train).dataset.samples
    with_eval_transform = [eval_transform(32)(Image.open(samples[index][0]).convert("RGB")) for index in order]
    assert (first - torch.stack(with_eval_transform)).abs().mean() < (0.05 if on_device else 1e-6)
    train_draws = [next(data.train.batches(5, torch.Generator().manual_seed(0)))[0] for _ in range(2)]
    assert not torch.equal(*train_draws)  # random crops and flips: the same order, other pixels
