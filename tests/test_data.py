"""The MNIST-like loading code on IDX files the tests write, and the in-memory batching."""

import pytest
import torch
from idx import write_mnist_like

from pruning_cli.data.mnist_like import load_mnist_like
from pruning_cli.data.synthetic import make_synthetic
from pruning_cli.errors import UserError


def test_mnist_loads_idx_files_from_torchvisions_layout(tmp_path):
    written = write_mnist_like(tmp_path / "MNIST" / "raw", {True: 30, False: 12})
    data = load_mnist_like("mnist", tmp_path, download=False)
    assert data.train.images.shape == (30, 1, 28, 28) and data.test.images.shape == (12, 1, 28, 28)
    assert data.train.images.dtype == torch.float32
    assert torch.equal(data.train.labels, written[True][1].long())
    # Pixels are scaled to [0, 1] and standardised with MNIST's mean and std.
    expected = (written[False][0][3].float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(data.test.images[3, 0], expected)
    assert data.num_classes == 10


def test_fashion_mnist_is_found_in_a_system_folder_of_gzipped_files(tmp_path):
    system_dir = tmp_path / "usr-share-datasets-fashion-mnist"
    written = write_mnist_like(system_dir, {True: 20, False: 10}, compress=True)
    data = load_mnist_like("fashion_mnist", tmp_path / "root", download=False, system_dir=system_dir)
    assert torch.equal(data.test.labels, written[False][1].long())
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_missing_mnist_names_the_folder_and_the_way_out(tmp_path):
    with pytest.raises(UserError) as error:
        load_mnist_like("mnist", tmp_path, download=False)
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "dataset.download=true" in message and "dataset=fashion_mnist" in message


def test_batches_cover_every_sample_once_in_a_seeded_order():
    data = make_synthetic(num_train=50, num_test=10, num_classes=3, image_shape=(1, 4, 4), seed=0)
    first = [labels for _, labels in data.train.batches(16, torch.Generator().manual_seed(5))]
    again = [labels for _, labels in data.train.batches(16, torch.Generator().manual_seed(5))]
    assert [len(labels) for labels in first] == [16, 16, 16, 2]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert sorted(torch.cat(first).tolist()) == sorted(data.train.labels.tolist())


def test_synthetic_data_is_deterministic():
    one = make_synthetic(8, 4, 10, (1, 28, 28), seed=3)
    two = make_synthetic(8, 4, 10, (1, 28, 28), seed=3)
    assert torch.equal(one.train.images, two.train.images) and torch.equal(one.test.labels, two.test.labels)
