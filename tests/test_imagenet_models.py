"""AlexNet and VGG-16 at ImageNet scale, tested on CPU: the models, the recipes, the data path, tiny runs.

The end-to-end runs use generated 3x224x224 images and a budget of one or two batches per phase; their run
directories (checkpoints of 0.2-0.7 GB each) are deleted as soon as each run has been read.
"""

import contextlib
import functools
import os
import shutil
import tempfile
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from runs import compose_config, pruning_run_in_process, run_in_process
from torch import nn

from pruning_cli.cli import config_dir
from pruning_cli.config.schema import PhaseConfig
from pruning_cli.data.imagenet import load_imagenet
from pruning_cli.errors import UserError
from pruning_cli.models import get_model_spec
from pruning_cli.models.pretrained import build_model
from pruning_cli.paper import PAPER_KEPT
from pruning_cli.pruning.dropout_rate import rescaled_dropout
from pruning_cli.pruning.masks import full_masks
from pruning_cli.run.plan import plan_run
from pruning_cli.training.loop import MaskedWeights, PhaseExecution, train_phase

NUM_CLASSES = 10
# AlexNet's paper recipe on a handful of generated images, a batch per phase, one iteration straight to the paper's
# fractions (the checkpoints written after every epoch and step, 0.25 GB each, dominate the time).
TINY_ALEXNET = [
    "experiment=alexnet_paper", "dataset=synthetic_imagenet", "model.weights=null", "dataset.num_train=2",
    "dataset.num_test=1", "pruning.iterations=1", "train.epochs=1", "retrain.epochs=1", "train.batch_size=2",
    "retrain.batch_size=2", "train.max_batches=1", "retrain.max_batches=1",
]  # fmt: skip


# The tiny runs write checkpoints of 0.25-0.7 GB after every epoch and step; where the machine has a memory file
# system, they go there (VGG-16's preset run, profiled once each way: 28 s there, 39 s on this disk).
MEMORY_DIR = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@functools.cache
def imagenet_model(name: str, device: str = "cpu") -> nn.Module:
    """torchvision's model at ImageNet's 1000 classes, built once per module: read only. On the meta device where only
    its structure is read (VGG-16's weights take a second to initialise)."""
    with torch.device(device):
        return get_model_spec(name).build(1000)


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize(("name", "expected"), [("alexnet", 61_100_840), ("vgg16", 138_357_544)])
def test_parameter_counts_are_torchvisions(name, expected):
    assert parameter_count(imagenet_model(name, "meta")) == expected


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_paper_names_cover_every_conv_and_fc_layer_and_the_dropouts_feed_them(name):
    spec = get_model_spec(name)
    model = imagenet_model(name, "meta")
    weighted = [path for path, module in model.named_modules() if isinstance(module, nn.Conv2d | nn.Linear)]
    assert list(spec.layers.values()) == weighted  # all of them, in forward order
    assert list(spec.layers) == list(PAPER_KEPT[name])
    assert [type(layer) for layer in spec.prunable(model).values()].count(nn.Linear) == 3
    classifier = list(model.classifier)
    for layer, path in spec.dropouts.items():
        dropout, target = int(path.split(".")[1]), int(spec.layers[layer].split(".")[1])
        assert isinstance(classifier[dropout], nn.Dropout) and classifier[dropout].p == 0.5
        between = classifier[dropout + 1 : target]
        assert dropout < target and not any(isinstance(m, nn.Linear | nn.Dropout) for m in between)
    assert spec.input_shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("experiment", "model", "iterations"), [("alexnet_paper", "alexnet", 3), ("vgg16_paper", "vgg16", 5)]
)
def test_paper_recipes_start_pretrained_and_retrain_at_a_hundredth_of_the_lr(experiment, model, iterations):
    config = compose_config(f"experiment={experiment}")
    assert config.model.name == model and config.model.weights == "IMAGENET1K_V1"
    assert config.dataset.name == "imagenet" and config.train.epochs == 0
    assert config.retrain.lr == pytest.approx(config.train.lr / 100)  # the paper's 1/100 for AlexNet
    assert config.pruning.iterations == iterations  # the kept fractions: test_configs.py


@contextlib.contextmanager
def memory_dir(prefix: str) -> Iterator[Path]:
    """A run directory in MEMORY_DIR where there is one, deleted afterwards."""
    out_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=MEMORY_DIR))
    try:
        yield out_dir
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_run():
    """A whole `prune-run experiment=alexnet_paper` on generated images, in process; deleted afterwards."""
    with memory_dir("tiny-alexnet-") as out_dir:
        yield out_dir, pruning_run_in_process(out_dir, *TINY_ALEXNET)


@pytest.mark.slow
def test_tiny_paper_run_reaches_the_recipe_and_saves_a_torchvision_model(tiny_run):
    out_dir, experiment = tiny_run
    reference = torchvision.models.get_model("alexnet", num_classes=NUM_CLASSES)
    metrics = pd.read_csv(out_dir / "metrics.csv")
    assert list(zip(metrics.iteration, metrics.phase, strict=True)) == [(0, "train"), (1, "prune"), (1, "retrain")]
    assert (metrics.params_total == parameter_count(reference)).all()
    layers = pd.read_csv(out_dir / "layers.csv")
    final = layers[layers.phase == "retrain"].set_index("layer")
    assert final.kept.to_dict() == pytest.approx(
        {layer: p / 100 for layer, p in PAPER_KEPT["alexnet"].items()}, abs=1e-4
    )
    state = torch.load(out_dir / "model.pt", weights_only=True)
    reference.load_state_dict(state)  # strict: torchvision's own keys
    # Every non-zero of the saved model is counted (biases of dead units may be exactly zero after a tiny run).
    assert sum(int(torch.count_nonzero(value)) for value in state.values()) == metrics.params_nonzero.iloc[-1]


@pytest.mark.slow
def test_dropout_feeding_a_pruned_fc_layer_is_rescaled_for_retraining(tiny_run):
    out_dir, experiment = tiny_run
    classifier = experiment.model.classifier
    assert classifier[0].p == pytest.approx(0.5 * 0.09**0.5, rel=1e-4) == pytest.approx(0.15)  # feeds fc6, kept 9%
    assert classifier[3].p == pytest.approx(0.5 * 0.09**0.5, rel=1e-4)  # feeds fc7, kept 9% too


@pytest.mark.slow
def test_vgg16_recipe_prunes_each_layer_to_the_papers_fraction_and_rescales_the_dropouts_it_feeds():
    """VGG-16's paper recipe through the pipeline's plan and pruning step (its end-to-end run is AlexNet's above,
    at 2.3x the weights, whose checkpoints would take most of the suite's time)."""
    plan = plan_run(compose_config("experiment=vgg16_paper", "model.weights=null", "pruning.iterations=1"))
    model = imagenet_model("vgg16")
    weights = {name: layer.weight for name, layer in plan.spec.prunable(model).items()}
    step = plan.policy.prune(1, SimpleNamespace(weights=weights, masks=full_masks(weights)))  # the run as it sees it
    masks, pruned = step.masks, step.records
    kept = {name: record.kept / weights[name].numel() for name, record in pruned.items()}
    paper = {layer: percent / 100 for layer, percent in PAPER_KEPT["vgg16"].items()}
    assert kept == pytest.approx(paper, abs=1e-3)  # a fraction of a layer's weights, rounded
    assert all(int(masks[name].sum()) == record.kept for name, record in pruned.items())
    rates = {layer: rescaled_dropout(0.5, masks[layer].numel(), pruned[layer].kept) for layer in plan.spec.dropouts}
    assert rates == pytest.approx({"fc7": 0.1, "fc8": 0.5 * 0.23**0.5}, abs=1e-4)  # fc7 at 4%: 0.5 -> 0.1
    assert all(isinstance(model.get_submodule(path), nn.Dropout) for path in plan.spec.dropouts.values())


@pytest.mark.parametrize(("freeze", "held", "trained"), [("conv", "conv", "fc"), ("fc", "fc", "conv")])
def test_frozen_layers_are_bit_identical_after_retraining(tmp_path, freeze, held, trained):
    # Nothing is pruned (no targets), so any change to a layer comes from the retraining step alone.
    experiment = pruning_run_in_process(
        tmp_path, "model=lenet5", "dataset=synthetic", "dataset.num_train=64", "dataset.num_test=32",
        "train.epochs=1", "train.batch_size=16", "pruning=oneshot", "pruning.sensitivity=null",
        "retrain.epochs=1", "retrain.batch_size=16", "retrain.lr=0.1",
        "retrain.weight_decay=0.01", f"retrain.freeze={freeze}",
    )  # fmt: skip
    before = torch.load(tmp_path / "checkpoints" / "dense.pt", weights_only=True)["model"]
    after = experiment.model.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        if key.startswith(held):
            assert same, key
        elif key.startswith(trained):
            assert not same, key
    assert all(parameter.requires_grad for parameter in experiment.model.parameters())  # released afterwards


def test_pretrained_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """The mechanism AlexNet's and VGG-16's recipes use, on a torchvision model a twentieth of AlexNet's size."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = get_model_spec("mobilenet_v3_small")
    cached = spec.build(1000).state_dict()
    url = torchvision.models.get_model_weights("mobilenet_v3_small").IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(cached, tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1])
    model = build_model(spec, "mobilenet_v3_small", 1000, "IMAGENET1K_V1")
    assert all(torch.equal(value, cached[key]) for key, value in model.state_dict().items())


def test_pretrained_weights_that_cannot_be_fetched_give_one_line(monkeypatch):
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.AlexNet_Weights, "get_state_dict", offline)
    spec = get_model_spec("alexnet")
    with pytest.raises(UserError, match=r"must already be in the torch hub cache .*train\.checkpoint="):
        build_model(spec, "alexnet", 1000, "IMAGENET1K_V1")
    with pytest.raises(UserError, match="for 1000 ImageNet classes but the data set has 10"):
        build_model(spec, "alexnet", 10, "IMAGENET1K_V1")
    with pytest.raises(UserError, match="not a weight set of alexnet; choose one of IMAGENET1K_V1"):
        build_model(spec, "alexnet", 1000, "IMAGENET1K_V9")
    with pytest.raises(UserError, match="needs a torchvision model"):
        build_model(get_model_spec("lenet5"), "lenet5", 1000, "IMAGENET1K_V1")


def _write_image_folder(root: Path, sizes: dict[str, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    for split, count in sizes.items():
        for label in ("n01440764", "n01443537"):
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                pixels = torch.randint(256, (40 + index, 50, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / label / f"{index}.JPEG", format="JPEG")


def test_imagenet_folder_is_read_through_a_dataloader_in_a_repeatable_order(tmp_path):
    _write_image_folder(tmp_path, {"train": 3, "val": 2})
    data = load_imagenet(tmp_path, num_workers=1, seed=0)
    assert (len(data.train), len(data.test), data.num_classes) == (6, 4, 2)
    assert data.train.num_batches(4) == 2 and data.train.device == torch.device("cpu")
    images, labels = next(data.test.batches(4))
    assert images.shape == (4, 3, 224, 224) and labels.tolist() == [0, 0, 1, 1]
    assert abs(images.mean().item()) < 1  # normalised with ImageNet's mean and std
    orders = [
        [labels.tolist() for _, labels in data.train.batches(2, torch.Generator().manual_seed(3))] for _ in range(2)
    ]
    assert orders[0] == orders[1] and sorted(sum(orders[0], [])) == [0, 0, 0, 1, 1, 1]
    model = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(), nn.LazyLinear(2))
    model(images)
    masked = MaskedWeights([model[0].weight], [torch.ones_like(model[0].weight, dtype=torch.bool)])
    phase = PhaseConfig(epochs=1, batch_size=2, max_batches=2)
    loss = train_phase(model, data.train, phase, masked, PhaseExecution(torch.Generator().manual_seed(0), "test"))
    assert loss == loss and loss > 0


def test_missing_imagenet_folder_is_named_in_one_line(tmp_path):
    missing = tmp_path / "imagenet"
    with pytest.raises(UserError) as refused:
        run_in_process(tmp_path / "run", "model=alexnet", "dataset=imagenet", f"dataset.root={missing}")
    assert str(refused.value).startswith(f"ImageNet folder {missing / 'train'} does not exist")
    assert "\n" not in str(refused.value)


def test_empty_imagenet_folder_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(UserError, match=f"ImageNet folder {tmp_path / 'train'} has no class folders with images"):
        load_imagenet(tmp_path, num_workers=0, seed=0)


@pytest.mark.parametrize("network", ["lenet300", "lenet5", "alexnet", "vgg16"])
def test_budgeted_presets_search_with_no_fractions_and_no_compression_of_their_own(network):
    """experiment=<net>_auto carries a budget, not an answer: its YAML sets no per-layer fractions and no
    compression, and the composed preset plans (a schedule that does not fit its retraining would be refused)."""
    preset = OmegaConf.load(Path(config_dir()) / "experiment" / f"{network}_auto.yaml")
    assert not {"kept", "target", "first"} & set(preset.get("pruning", {}))
    config = compose_config(f"experiment={network}_auto")
    assert config.model.name == network and config.pruning.name == "auto"
    plan_run(config)


@pytest.mark.slow
@pytest.mark.parametrize(("network", "walk_steps"), [("alexnet", 2), ("vgg16", 1)])
def test_the_imagenet_budgeted_presets_run_end_to_end_on_generated_images(network, walk_steps):
    """Each preset runs on its network; AlexNet's walk takes a second step (VGG-16's writes 0.7 GB a checkpoint)."""
    tiny = [
        f"experiment={network}_auto", "dataset=synthetic_imagenet", "model.weights=null", "dataset.num_train=4",
        "dataset.num_test=1", "dataset.val_split=2", f"pruning.max_steps={walk_steps}", "retrain.epochs=1",
        "pruning.end=1", "pruning.budget=100", "train.batch_size=2", "retrain.batch_size=2", "retrain.max_batches=1",
    ]  # fmt: skip
    with memory_dir(f"{network}-auto-") as out_dir:
        metrics = run_in_process(out_dir, *tiny)
        assert (out_dir / "model.pt").is_file()
    retrained = metrics[metrics.phase == "retrain"]
    assert metrics.phase.tolist()[:3] == ["train", "prune", "retrain"] and len(retrained) == walk_steps
    assert retrained.compression.iloc[0] == pytest.approx(8, rel=0.01)  # pruning.first
