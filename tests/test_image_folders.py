"""Image folders as users have them: a file that cannot be decoded, an empty class folder, a class one split lacks:
each named in one line before any training; `dataset.skip_bad_images=true` leaves unreadable files out and counts
them; `dataset.check_images=false` leaves the files to the loader."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from runs import run_in_process

from pruning_cli.data.image_check import FolderCheck, header_problem, unreadable
from pruning_cli.data.imagenet import load_imagenet
from pruning_cli.errors import UserError

CLASSES = ("cat", "dog")
TINY = [
    "model=torchvision", "model.arch=mobilenet_v3_small", "model.input_shape=[3,32,32]", "dataset=image_folder",
    "dataset.size=32", "dataset.num_workers=0", "train.epochs=1", "train.batch_size=4", "retrain.epochs=1",
    "retrain.batch_size=4", "pruning.iterations=1", "dataset.eval_batch_size=8", "train.max_batches=1",
    "retrain.max_batches=1",
]  # fmt: skip


def _folder(root: Path, per_class: int = 3) -> Path:
    """train/ and val/ with `per_class` real JPEG files in each class folder."""
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in CLASSES:
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = torch.randint(256, (36, 40, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / label / f"{index}.jpg", format="JPEG")
    return root


def test_a_zero_byte_jpeg_is_named_in_one_line_with_how_to_skip_it(tmp_path):
    root = _folder(tmp_path)
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"")
    with pytest.raises(UserError) as refused:
        load_imagenet(root, num_workers=0, seed=0, size=32)
    message = str(refused.value)
    assert message.startswith(f"image file {bad} cannot be read (UnidentifiedImageError")
    assert message.endswith("remove it, or set dataset.skip_bad_images=true to leave such files out")
    assert "\n" not in message


def test_skipped_files_are_counted_and_the_class_list_stays(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"")
    (root / "val" / "cat" / "truncated.jpg").write_bytes((root / "val" / "cat" / "0.jpg").read_bytes()[:20])
    data = load_imagenet(root, num_workers=0, seed=0, size=32, check=FolderCheck(skip_bad=True))
    assert data.skipped_images == 2 and data.num_classes == 2
    assert (len(data.train), len(data.test)) == (6, 6)  # the 3 + 3 readable files of each split
    assert sorted(torch.cat([labels for _, labels in data.test.batches(4)]).tolist()) == [0, 0, 0, 1, 1, 1]


def test_header_check_reads_real_files_and_flags_damaged_ones(tmp_path):
    root = _folder(tmp_path, per_class=1)
    good = root / "train" / "cat" / "0.jpg"
    text = root / "train" / "cat" / "notes.png"
    text.write_text("not an image")
    assert header_problem(str(good)) is None
    assert unreadable([str(good), str(text)], "test") == [(str(text), header_problem(str(text)))]
    assert header_problem(str(text)).startswith("UnidentifiedImageError")


def test_an_empty_class_folder_is_named(tmp_path):
    root = _folder(tmp_path)
    (root / "val" / "bird").mkdir()
    (root / "train" / "bird").mkdir()
    (root / "train" / "bird" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError) as refused:
        load_imagenet(root, num_workers=0, seed=0, size=32)
    assert str(refused.value).startswith(f"ImageNet class folder {root / 'train' / 'bird'} holds no images")


def test_a_class_one_split_lacks_is_named(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "bird").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / "bird" / "0.jpg")
    with pytest.raises(UserError) as refused:
        load_imagenet(root, num_workers=0, seed=0, size=32, what="image")
    assert str(refused.value) == (
        f"image folder {root / 'val'} lacks the class folder(s) bird that {root / 'train'} has: both splits need the "
        "same class folders"
    )


def test_check_images_false_leaves_the_files_to_the_loader(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"")
    data = load_imagenet(root, num_workers=0, seed=0, size=32, check=FolderCheck(headers=False))
    assert len(data.train) == 7 and data.skipped_images == 0


def test_a_run_that_skips_bad_files_records_them_in_run_json(tmp_path):
    root = _folder(tmp_path / "images", per_class=4)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"")
    overrides = [*TINY, f"dataset.root={root}", "dataset.skip_bad_images=true", "dataset.val_split=2"]
    metrics = run_in_process(tmp_path / "run", *overrides)
    assert metrics.phase.tolist() == ["train", "prune", "retrain"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["runtime"]["skipped_images"] == 1


def test_a_run_names_a_bad_file_in_one_line_and_writes_nothing(tmp_path):
    root = _folder(tmp_path / "images")
    bad = root / "val" / "cat" / "empty.jpg"
    bad.write_bytes(b"")
    out_dir = tmp_path / "run"
    with pytest.raises(UserError) as refused:
        run_in_process(out_dir, *TINY, f"dataset.root={root}")
    assert str(refused.value) == (
        f"image file {bad} cannot be read (UnidentifiedImageError: cannot identify image file '{bad}'): remove it, "
        "or set dataset.skip_bad_images=true to leave such files out"
    )
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_class_folders_with_images_in_subfolders_are_taken_as_imagefolder_takes_them(tmp_path):
    root = _folder(tmp_path)
    for split in ("train", "val"):
        for label in CLASSES:
            nested = root / split / label / "more"
            nested.mkdir()
            for image in (root / split / label).glob("*.jpg"):
                image.rename(nested / image.name)
    data = load_imagenet(root, num_workers=0, seed=0, size=32)
    assert (len(data.train), len(data.test), data.num_classes) == (6, 6, 2)


def test_the_header_check_reads_in_batches_and_keeps_the_order(tmp_path, monkeypatch):
    import pruning_cli.data.image_check as image_check

    monkeypatch.setattr(image_check, "BATCH", 2)
    root = _folder(tmp_path, per_class=1)
    good = str(root / "train" / "cat" / "0.jpg")
    bad = [tmp_path / f"bad{index}.jpg" for index in range(3)]
    for path in bad:
        path.write_bytes(b"")
    paths = [good, str(bad[0]), good, good, str(bad[1]), str(bad[2]), good]
    assert [path for path, _ in unreadable(paths, "test")] == [str(path) for path in bad]
