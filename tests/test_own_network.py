"""Any torchvision classifier by name: its prunable layers found by walking the module, every feature on them."""

import json

import pandas as pd
import pytest
import torch
import torchvision
from independent_reader import read_file
from own_nets import TinyNet
from PIL import Image
from runs import compose_config, run_in_process, without_wall_time
from torch import nn

from pruning_cli.data.tensors import fit_images
from pruning_cli.errors import UserError
from pruning_cli.models import get_model_spec
from pruning_cli.pruning.stats import layer_stats
from pruning_cli.records.contract import RUN_RECORD
from pruning_cli.run.plan import plan_run
from pruning_cli.run.pruning_run import run
from pruning_cli.sparse.cli import export_run, model_spec
from pruning_cli.sparse.cli import run as export_cli
from pruning_cli.sparse.compact_file import read_compact
from pruning_cli.sparse.export import exported_state_dict, load_export, model_from_state
from pruning_cli.training.loop import StopRequested

TORCHVISION = ["model=torchvision", "dataset=synthetic", "dataset.num_train=32", "dataset.num_test=16",
               "model.input_shape=[3,32,32]", "train.epochs=1", "retrain.epochs=1", "pruning.iterations=1",
               "train.batch_size=16", "retrain.batch_size=16"]  # fmt: skip


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_every_convolution_and_linear_layer_is_found_and_nothing_else(arch):
    """The prunable weights are every 4-D (conv) and 2-D (linear) weight of the model: norm layers and biases not."""
    spec = get_model_spec(arch)
    model = torchvision.models.get_model(arch, num_classes=10)
    expected = {name.removesuffix(".weight"): p.numel() for name, p in model.named_parameters() if p.dim() in (2, 4)}
    assert spec.layer_sizes() == expected and list(spec.layers) == list(expected)  # in the model's own order
    kinds = spec.layer_kinds()
    assert kinds[next(iter(kinds))] == "conv" and kinds[list(kinds)[-1]] == "fc"


def test_a_dropout_in_front_of_a_linear_layer_is_rescaled_and_a_model_without_one_has_none():
    assert get_model_spec("mobilenet_v3_small").dropouts == {
        "classifier.3": "classifier.2"
    }  # Linear, Hardswish, Dropout, Linear
    assert get_model_spec("efficientnet_b0").dropouts == {"classifier.1": "classifier.0"}
    assert get_model_spec("resnet18").dropouts == {}


def test_grouped_and_depthwise_convolutions_count_flops_and_dead_inputs_per_group():
    """Depthwise 3x3 over 16 channels at 8x8 output positions: 144 weights, each one multiply-add per position
    (2 FLOPs). Grouped 1x1, 4 filters over 4 inputs in 2 groups: zeroing group 0's first input for its own two
    filters kills that input channel, though group 1's filters have a live input at the same weight column."""
    depthwise = nn.Conv2d(16, 16, 3, groups=16).weight.detach()
    assert layer_stats(depthwise, positions=64, groups=16)["flops_total"] == 2 * 16 * 9 * 64
    grouped = torch.ones(4, 2, 1, 1)
    grouped[0:2, 0] = 0
    stats = layer_stats(grouped, positions=1, groups=2)
    assert (stats["dead_inputs"], stats["dead_outputs"], stats["flops_nonzero"]) == (1, 0, 12)
    depthwise[3] = 0  # channel 3's only filter: its input and its output are dead
    stats = layer_stats(depthwise, positions=1, groups=16)
    assert (stats["dead_inputs"], stats["dead_outputs"]) == (1, 1)


def test_mnist_like_images_are_resized_and_their_channel_repeated_for_the_model():
    images = torch.rand(5, 1, 28, 28)
    fitted = fit_images(images, (3, 32, 32))
    assert fitted.shape == (5, 3, 32, 32) and torch.equal(fitted[:, 0], fitted[:, 2])
    assert torch.equal(fit_images(images, (3, 28, 28))[:, 1], images[:, 0])  # the right size: only repeated
    with pytest.raises(ValueError, match="2-channel images cannot feed a model that takes 3 channels"):
        fit_images(torch.rand(2, 2, 8, 8), (3, 8, 8))


@pytest.fixture(scope="module")
def mobilenet_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("mobilenet")
    excluded = "pruning.exclude=[features.0.0,classifier.3]"
    quantized = ["quantize=kmeans", "quantize.epochs=1", "quantize.batch_size=16"]
    return out_dir, run_in_process(out_dir, *TORCHVISION, "model.arch=mobilenet_v3_small", excluded, *quantized)


def test_a_mobilenet_prunes_end_to_end_and_its_csvs_count_the_weights_of_model_pt(mobilenet_run):
    out_dir, metrics = mobilenet_run
    layers = pd.read_csv(out_dir / "layers.csv")
    final = layers[(layers.iteration == 1) & (layers.phase == "quantize")].set_index("layer")
    state = torch.load(out_dir / "model.pt", weights_only=True)
    assert "features.0.0" not in final.index and "classifier.3" not in final.index  # pruning.exclude
    assert torch.count_nonzero(state["classifier.3.weight"]) == state["classifier.3.weight"].numel()
    for name, row in final.iterrows():
        assert row.weights_nonzero == torch.count_nonzero(state[f"{name}.weight"]), name
    model = torchvision.models.get_model("mobilenet_v3_small", num_classes=10)
    model.load_state_dict(state)  # parameters, not the norm layers' running statistics (buffers)
    assert metrics.params_nonzero.iloc[-1] == sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert metrics.compression.iloc[-1] > 1.5


@pytest.mark.parametrize("encoding", ["compact", "quantized", "deep"])
def test_its_export_decodes_exactly_with_depthwise_layers_and_norm_counters(mobilenet_run, encoding):
    """Each file holds every tensor of model.pt in its order, the norm layers' int64 counters included (kind 4,
    version 3), and the independent reader of docs/formats.md decodes it to the same bits as ours."""
    out_dir, _ = mobilenet_run
    if not (out_dir / "model_deep.bin").exists():
        export_run(out_dir, None, remove_dead=True, file_format="all")
    path, expected = out_dir / f"model_{encoding}.bin", torch.load(out_dir / "model.pt", weights_only=True)
    model, ours = read_compact(path)
    assert model == "mobilenet_v3_small" and path.read_bytes()[4] == 3
    for decoded in (ours, read_file(path)):
        assert list(decoded) == list(expected)
        assert all(decoded[key].dtype == value.dtype and torch.equal(decoded[key], value)
                   for key, value in expected.items())  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.arch=none_such"], "model.arch=none_such is no torchvision classifier; choose one of"),
        (["model.arch=alexnet"], "model.arch=alexnet has its paper names here: use model=alexnet"),
        (["model.arch=resnet18", "pruning.exclude=[conv9]"], "pruning.exclude names conv9, which this model does "
         "not have; its prunable layers: conv1, layer1.0.conv1"),
        (["model.arch=resnet18", "model.input_shape=[3,32]"], "model.input_shape is [3, 32]; give [channels, "),
    ],
)  # fmt: skip
def test_bad_model_settings_are_one_line(overrides, expected):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config("model=torchvision", *overrides))
    assert str(refused.value).startswith(expected) and "\n" not in str(refused.value)


def test_a_missing_architecture_says_how_to_name_one():
    with pytest.raises(UserError, match="model=torchvision needs model.arch=NAME, a torchvision classifier, e.g."):
        plan_run(compose_config("model=torchvision"))


def test_excluding_every_layer_is_refused():
    layers = ",".join(get_model_spec("mobilenet_v3_small").layers)
    with pytest.raises(UserError, match="pruning.exclude leaves no layer to prune"):
        plan_run(compose_config("model=torchvision", "model.arch=mobilenet_v3_small", f"pruning.exclude=[{layers}]"))


def _write_folders(root, classes: int, per_class: dict[str, int]) -> None:
    """An image folder of `classes` classes, images of varying sizes (PNG), per split as `per_class` says."""
    generator = torch.Generator().manual_seed(0)
    for split, count in per_class.items():
        for label in range(classes):
            (root / split / f"class_{label}").mkdir(parents=True)
            for index in range(count):
                pixels = torch.randint(256, (20 + 3 * index, 24 + label, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / f"class_{label}" / f"{index}.png")


@pytest.mark.slow
def test_your_own_image_folder_trains_a_torchvision_model_at_its_size(tmp_path):
    """dataset=image_folder: 3 classes of images of different sizes, cropped to dataset.size for the model."""
    _write_folders(tmp_path / "images", 3, {"train": 6, "val": 2})
    overrides = [
        "model=torchvision", "model.arch=mobilenet_v3_small", "dataset=image_folder",
        f"dataset.root={tmp_path / 'images'}", "dataset.size=32", "dataset.num_workers=0", "dataset.eval_batch_size=4",
        "train.epochs=1", "retrain.epochs=1", "pruning.iterations=1", "train.batch_size=6", "retrain.batch_size=6",
        "dataset.val_split=3",
    ]  # fmt: skip
    metrics = run_in_process(tmp_path / "run", *overrides)
    assert metrics.phase.tolist() == ["train", "prune", "retrain"] and metrics.params_total.iloc[0] > 1_000_000
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert state["classifier.3.weight"].shape == (3, 1024)  # the folder's classes


def test_an_image_folders_normalisation_needs_a_value_per_channel(tmp_path):
    _write_folders(tmp_path / "images", 2, {"train": 1, "val": 1})
    with pytest.raises(UserError, match="dataset.mean and dataset.std need one value per channel of the model's"):
        run_in_process(tmp_path / "run", "model=torchvision", "model.arch=resnet18", "dataset=image_folder",
                       f"dataset.root={tmp_path / 'images'}", "dataset.mean=[0.5]", "dataset.std=[0.5]")  # fmt: skip


CUSTOM = ["model=custom", "model._target_=own_nets.TinyNet", "dataset=synthetic", "dataset.num_train=256",
          "dataset.num_test=64", "train.epochs=1", "retrain.epochs=1", "pruning.iterations=2"]  # fmt: skip


def test_your_own_module_is_built_from_its_import_path_and_prunes_end_to_end(tmp_path):
    metrics = run_in_process(tmp_path, *CUSTOM, "model.args={width:6}")
    layers = pd.read_csv(tmp_path / "layers.csv")
    final = layers[(layers.iteration == 2) & (layers.phase == "retrain")].set_index("layer")
    assert list(final.index) == ["features.0", "features.2", "head.1"]
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state["features.0.weight"].shape == (6, 1, 3, 3) and state["features.2.weight"].shape == (6, 1, 3, 3)
    for name, row in final.iterrows():
        assert row.weights_nonzero == torch.count_nonzero(state[f"{name}.weight"]), name
    assert metrics.compression.iloc[-1] > 1.5 and final.loc["features.2", "flops_total"] == 2 * 54 * 26 * 26


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model._target_=own_nets.Missing"], "model._target_=own_nets.Missing cannot be built: "),
        (["model._target_=no_such_package.Net"], "model._target_=no_such_package.Net cannot be built: "),
        (["model._target_=own_nets.NoWeights"], "model._target_=own_nets.NoWeights has no Conv2d or Linear layer"),
        (["model._target_=own_nets.TinyNet", "model.args={depth:3}"], "model._target_=own_nets.TinyNet cannot be"),
    ],
)
def test_a_module_that_cannot_be_used_is_refused_in_one_line_before_training(overrides, expected):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config("model=custom", "dataset=synthetic", *overrides))
    assert str(refused.value).startswith(expected) and "\n" not in str(refused.value)


def test_a_module_whose_outputs_do_not_match_the_classes_is_refused_before_training(tmp_path):
    with pytest.raises(UserError) as refused:
        run_in_process(tmp_path, *CUSTOM, "model.args={classes:7}")
    assert str(refused.value) == ("model own_nets.TinyNet outputs [7] per image, but the data set has 10 "
                                  "classes: give it one logit per class (e.g. through model.args)")  # fmt: skip
    assert not (tmp_path / "metrics.csv").exists()


def test_a_linear_layer_over_a_sequence_counts_one_multiply_add_per_token(tmp_path):
    run_in_process(tmp_path, *CUSTOM, "model._target_=own_nets.TokenMixer", "pruning.iterations=1")
    layers = pd.read_csv(tmp_path / "layers.csv").query("iteration == 0").set_index("layer")
    assert layers.loc["mix", "flops_total"] == 2 * 64 * 49 and layers.loc["head", "flops_total"] == 2 * 80
    assert layers.loc["stem", "flops_total"] == 2 * 128 * 49


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("own_nets.Raises", "model own_nets.Raises cannot take a batch of [1, 28, 28] images (model.input_shape): "
         "this module wants 32 x 32 images"),
        ("own_nets.Functional", "a forward pass never calls hidden as a module (used functionally, or an auxiliary "
         "head): leave it dense with pruning.exclude=[...]"),
    ],
)  # fmt: skip
def test_a_module_that_fails_forward_or_hides_a_layer_is_refused_before_training(target, expected, tmp_path):
    with pytest.raises(UserError) as refused:
        run_in_process(tmp_path, *CUSTOM, f"model._target_={target}")
    assert str(refused.value) == expected and not (tmp_path / "metrics.csv").exists()


def test_excluding_a_layer_of_a_paper_network_keeps_its_export_exact(tmp_path):
    """With fc2 left dense, fc1's units no longer feed a pruned layer directly: no dead unit is removed, and the
    export decodes to model.pt."""
    smoke = ["dataset=synthetic", "dataset.num_train=256", "dataset.num_test=64", "train.epochs=1", "retrain.epochs=0"]
    run_in_process(tmp_path, *smoke, "pruning.exclude=[fc2]", "pruning.sensitivity=3", "pruning.iterations=1")
    export_run(tmp_path, None, remove_dead=True, file_format="compact")
    expected = torch.load(tmp_path / "model.pt", weights_only=True)
    _, decoded = read_compact(tmp_path / "model_compact.bin")
    assert all(torch.equal(decoded[key], value) for key, value in expected.items())
    assert torch.count_nonzero(expected["fc2.weight"]) == expected["fc2.weight"].numel()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=lenet5", "model.input_shape=[1,32,32]"], "model.input_shape applies to model=torchvision and "),
        (["model=torchvision", "model.arch=resnet18", "dataset=image_folder", "dataset.root=/x", "dataset.size=64",
          "model.input_shape=[3,32,32]"], "model.input_shape is [3, 32, 32] but dataset.size=64 makes [3, 64, 64]"),
        (["model=torchvision", "model.arch=resnet18", "dataset=synthetic_imagenet", "model.input_shape=[3,64,64]"],
         "dataset=synthetic_imagenet makes [3, 224, 224] images, not [3, 64, 64]"),
        (["model=custom", "model._target_=own_nets.TinyNet", "model.args=3"], "model.args is 3; give keyword"),
    ],
)  # fmt: skip
def test_an_input_the_data_will_not_deliver_is_refused_in_one_line(overrides, expected):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*overrides))
    assert str(refused.value).startswith(expected) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "policy",
    [
        ["pruning=global", "pruning.target=4", "pruning.iterations=1"],
        ["pruning=lamp", "pruning.target=4", "pruning.iterations=1"],
        ["pruning=gradual", "pruning.target=4", "pruning.end=1", "pruning.frequency=2"],
        ["pruning=auto", "dataset.val_split=64", "pruning.max_steps=2", "pruning.end=1", "pruning.frequency=2",
         "pruning.budget=100"],
    ],
    ids=["global", "lamp", "gradual", "auto"],
)  # fmt: skip
def test_every_policy_prunes_your_own_module(policy, tmp_path):
    run_in_process(tmp_path, *CUSTOM[:-1], *policy)
    layers = pd.read_csv(tmp_path / "layers.csv")
    final = layers[layers.iteration == layers.iteration.max()]
    final = final[final.phase == final.phase.iloc[-1]]
    assert set(final.layer) == {"features.0", "features.2", "head.1"}
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    kept = sum(int(torch.count_nonzero(state[f"{name}.weight"])) for name in final.layer)
    assert kept == final.weights_nonzero.sum() and kept < final.weights_total.sum() / 1.5


def test_a_sensitivity_analysis_walks_a_torchvision_models_layers(tmp_path):
    overrides = [*TORCHVISION, "model.arch=mobilenet_v3_small", "task=sensitivity", "dataset.val_split=16",
                 "task.levels=[0.5]", "pruning.exclude=[features.0.0]"]  # fmt: skip
    run_in_process(tmp_path, *overrides)
    table = pd.read_csv(tmp_path / "sensitivity.csv")
    analysed = set(table.layer) - {"none"}
    assert analysed == set(get_model_spec("mobilenet_v3_small").layers) - {"features.0.0"}


def test_your_own_modules_run_is_exported_and_decodes_to_model_pt(tmp_path, capsys):
    """prune-export rebuilds the module from the run's record (model._target_, model.args) and writes every format
    that applies; both readers decode the compact file to model.pt, and the rebuilt model gives its logits."""
    run_in_process(tmp_path, *CUSTOM, "model.args={width:6}")
    assert export_cli([str(tmp_path), "--format", "all"]) == 0
    printed = capsys.readouterr().out
    assert all(
        f"wrote {tmp_path / name}: " in printed for name in ("model_sparse.pt", "model_compact.bin", "model_deep.bin")
    )
    assert "skipped model_semi_structured.pt: model.pt has no layer 2:4 sparse" in printed  # (and so few weights that
    # every layer has under 255 distinct values: the quantized files are written too)
    expected = torch.load(tmp_path / "model.pt", weights_only=True)
    name, ours = read_compact(tmp_path / "model_compact.bin")
    assert name == "own_nets.TinyNet"
    for decoded in (ours, read_file(tmp_path / "model_compact.bin")):
        assert list(decoded) == list(expected) and all(torch.equal(decoded[key], expected[key]) for key in expected)
    rebuilt = model_from_state(name, exported_state_dict(load_export(tmp_path / "model_sparse.pt")),
                               model_spec(tmp_path, name))  # fmt: skip
    own = TinyNet(width=6).eval()
    own.load_state_dict(expected)
    images = torch.randn(4, 1, 28, 28)
    assert torch.equal(rebuilt(images), own(images))


def test_a_custom_runs_model_needs_its_record_and_its_own_module(tmp_path, capsys):
    run_in_process(tmp_path, *CUSTOM, "pruning.iterations=1")
    with pytest.raises(ValueError, match=r"model own_nets.TinyNet is a module of your own \(model=custom\): pass"):
        model_from_state("own_nets.TinyNet", torch.load(tmp_path / "model.pt", weights_only=True))
    assert export_cli([str(tmp_path), "--model", "own_nets.Wide"]) == 2
    assert capsys.readouterr().err == (f"prune-export: error: --model own_nets.Wide is not the module of "
                                       f"{tmp_path / RUN_RECORD} (own_nets.TinyNet), whose arguments prune-export "
                                       "takes; leave --model out\n")  # fmt: skip
    (tmp_path / RUN_RECORD).unlink()
    assert export_cli([str(tmp_path), "--model", "own_nets.TinyNet"]) == 2
    assert capsys.readouterr().err.startswith(f"prune-export: error: {tmp_path}: no {RUN_RECORD} (a run of a version")


def test_a_custom_run_whose_module_no_longer_imports_is_refused_in_one_line(tmp_path, capsys):
    run_in_process(tmp_path, *CUSTOM, "pruning.iterations=1")
    record = json.loads((tmp_path / RUN_RECORD).read_text())
    record["config"]["model"]["_target_"] = "own_nets.Renamed"
    (tmp_path / RUN_RECORD).write_text(json.dumps(record))
    assert export_cli([str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"prune-export: error: {tmp_path} is a model=custom run of own_nets.Renamed: "
                            "model._target_=own_nets.Renamed cannot be built: ")  # fmt: skip
    assert error.endswith("; run prune-export where the module imports, as prune-run did\n") and error.count("\n") == 1


@pytest.mark.parametrize(
    "model",
    [["model=torchvision", "model.arch=shufflenet_v2_x0_5", "model.input_shape=[3,32,32]"],
     ["model=custom", "model._target_=own_nets.TinyNet"]],
    ids=["shufflenet", "custom"],
)  # fmt: skip
def test_a_discovered_model_stopped_mid_retraining_resumes_to_the_uninterrupted_run(model, tmp_path):
    """Norm layers' running statistics and counters, and a user's module, come back with the run's state."""
    overrides = [*model, "dataset=synthetic", "dataset.num_train=32", "dataset.num_test=16", "train.epochs=1",
                 "retrain.epochs=2", "pruning.iterations=2", "train.batch_size=16",
                 "retrain.batch_size=16"]  # fmt: skip
    uninterrupted, stopped = tmp_path / "uninterrupted", tmp_path / "stopped"
    run_in_process(uninterrupted, *overrides)

    def in_second_retraining() -> bool:  # train, 2 retraining epochs of iteration 1, the first of iteration 2
        epochs = stopped / "epochs.csv"
        return epochs.is_file() and len(pd.read_csv(epochs)) == 4

    with pytest.raises(StopRequested):
        run(compose_config(*overrides), stopped, stop_requested=in_second_retraining)
    assert not (stopped / "model.pt").exists()
    run(compose_config(*overrides), stopped)
    for name in ("metrics.csv", "layers.csv", "epochs.csv"):
        pd.testing.assert_frame_equal(without_wall_time(stopped / name), without_wall_time(uninterrupted / name))
    resumed, expected = (torch.load(d / "model.pt", weights_only=True) for d in (stopped, uninterrupted))
    assert list(resumed) == list(expected) and all(torch.equal(resumed[key], expected[key]) for key in expected)
