"""`prune-export --format onnx`: a graph smaller where units are dead, that onnxruntime runs to model.pt's logits,
for the paper's networks, a torchvision model and your own module; one-line refusals otherwise."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from idx import write_mnist_like
from own_nets import TinyNet

from pruning_cli.data.synthetic import make_synthetic
from pruning_cli.models import get_model_spec
from pruning_cli.pruning.masks import top_fraction_mask
from pruning_cli.records.contract import RUN_RECORD
from pruning_cli.sparse import check_images, cli, onnx_export
from pruning_cli.sparse.cli import run

ERROR = "prune-export: error: "


def write_run(run_dir: Path, model: dict, state: dict[str, torch.Tensor], dataset: dict | None = None) -> Path:
    """A run directory as prune-run leaves it, as far as prune-export reads it: run.json's model (and data set)
    and model.pt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"seed": 0, "model": model, **({"dataset": dataset} if dataset else {})}
    (run_dir / RUN_RECORD).write_text(json.dumps({"format": 1, "config": config}))
    torch.save(state, run_dir / "model.pt")
    return run_dir


def lenet300_with_dead_units() -> dict[str, torch.Tensor]:
    """LeNet-300-100 at 10% of its weights, with 100 fc1 units without inputs and 30 fc2 units without outputs."""
    torch.manual_seed(0)
    model = get_model_spec("lenet300").build(10)
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.fc3):
            layer.weight.mul_(top_fraction_mask(layer.weight, 0.1)[0])
        model.fc1.weight[:100] = 0
        model.fc3.weight[:, :30] = 0
    return model.state_dict()


def alive_units(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """fc1 and fc2 units that keep an input and an output connection, repeated until nothing changes (a unit can
    lose its last connection when its neighbours go): computed from the weights alone, not by prune-export."""
    w1, w2, w3 = (state[f"fc{k}.weight"] != 0 for k in (1, 2, 3))
    alive1, alive2 = w1.any(dim=1), w3.any(dim=0)
    while True:
        new1 = alive1 & w2[alive2].any(dim=0)
        new2 = alive2 & w2[:, new1].any(dim=1)
        if torch.equal(new1, alive1) and torch.equal(new2, alive2):
            return int(alive1.sum()), int(alive2.sum())
        alive1, alive2 = new1, new2


def float_elements(path: Path) -> int:
    """The numbers the graph stores as floating-point initializers: its weights and biases."""
    import onnx  # imported where it is used: half a second of every test process's start otherwise
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return sum(array.size for array in map(numpy_helper.to_array, graph.initializer) if array.dtype.kind == "f")


def onnx_logits(path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])


def model_pt_logits(model: torch.nn.Module, state: dict, images: torch.Tensor) -> torch.Tensor:
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(images)


def assert_same(path: Path, model: torch.nn.Module, state: dict, images: torch.Tensor) -> None:
    ours, expected = onnx_logits(path, images), model_pt_logits(model, state, images)
    assert torch.equal(ours.argmax(dim=1), expected.argmax(dim=1))
    assert (ours - expected).abs().max() <= 1e-4


def test_dead_units_are_removed_from_the_graph_and_it_computes_model_pt(tmp_path, capsys):
    state = lenet300_with_dead_units()
    run_dir = write_run(tmp_path / "run", {"name": "lenet300"}, state)
    assert run([str(run_dir), "--format", "onnx"]) == 0
    units1, units2 = alive_units(state)
    assert units1 <= 200 and units2 <= 70
    expected = units1 * 784 + units2 * units1 + 10 * units2 + units1 + units2 + 10
    assert float_elements(run_dir / "model.onnx") == expected < 266_610
    printed = capsys.readouterr().out
    size = (run_dir / "model.onnx").stat().st_size
    assert f"wrote {run_dir / 'model.onnx'}: {size:,} bytes" in printed
    assert "onnxruntime on 1,000 fixed random inputs (run.json names no data set): top-1 as model.pt on all" in printed
    images = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    assert_same(run_dir / "model.onnx", get_model_spec("lenet300").build(10), state, images)
    assert run([str(run_dir), "--format", "onnx", "--keep-dead"]) == 0
    assert float_elements(run_dir / "model.onnx") == 266_610


def test_lenet5_exports_with_a_dynamic_batch(tmp_path):
    torch.manual_seed(1)
    model = get_model_spec("lenet5").build(10)
    with torch.no_grad():
        for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
            layer.weight.mul_(top_fraction_mask(layer.weight, 0.08)[0])
    run_dir = write_run(tmp_path / "run", {"name": "lenet5"}, model.state_dict())
    assert run([str(run_dir), "--format", "onnx"]) == 0
    for batch in (1, 5):
        images = torch.randn(batch, 1, 28, 28)
        assert_same(run_dir / "model.onnx", get_model_spec("lenet5").build(10), model.state_dict(), images)


def fashion_mnist_dataset(root: Path, test_images: int) -> dict:
    """run.json's dataset of a Fashion-MNIST run whose IDX files (random pixels, 20 training images) are in `root`."""
    write_mnist_like(root / "FashionMNIST" / "raw", {True: 20, False: test_images})
    return {"name": "fashion_mnist", "root": str(root), "download": True, "system_dir": None}


def test_the_check_runs_the_runs_own_test_images(tmp_path):
    dataset = fashion_mnist_dataset(tmp_path / "data", 1200)
    inputs = check_images.check_images({"seed": 0, "dataset": dataset}, (1, 28, 28), 1000)
    assert inputs.source == "1,000 Fashion-MNIST test images" and inputs.images.shape == (1000, 1, 28, 28)
    pixels = write_mnist_like(tmp_path / "again", {True: 20, False: 1200})[False][0][:1000]
    assert torch.allclose(inputs.images[:, 0], (pixels / 255 - 0.2860) / 0.3530)  # normalised as the run's
    synthetic = {"name": "synthetic", "num_train": 50, "num_test": 300, "num_classes": 10}
    inputs = check_images.check_images({"seed": 3, "dataset": synthetic}, (1, 28, 28), 1000)
    assert inputs.source == "300 synthetic test images"
    assert torch.equal(inputs.images, make_synthetic(50, 300, 10, (1, 28, 28), 3).test.images)
    missing = {**dataset, "root": str(tmp_path / "nowhere")}
    inputs = check_images.check_images({"seed": 0, "dataset": missing}, (1, 28, 28), 1000)
    assert inputs.source == "1,000 fixed random inputs (the run's fashion_mnist test files are not on this machine)"
    folder = {"name": "image_folder", "root": str(tmp_path)}
    inputs = check_images.check_images({"dataset": folder}, (3, 32, 32), 10)
    assert inputs.source == "10 fixed random inputs (prune-export does not read image_folder images)"
    assert inputs.images.shape == (10, 3, 32, 32)


@pytest.mark.slow  # a whole torchvision model through the exporter: 15 s on 2 cores
def test_a_torchvision_model_exports_and_computes_model_pt(tmp_path):
    torch.manual_seed(2)
    model = torchvision.models.get_model("squeezenet1_1", num_classes=10)  # random weights, no download
    with torch.no_grad():
        model.features[0].weight.mul_(top_fraction_mask(model.features[0].weight, 0.2)[0])
    record = {"name": "torchvision", "arch": "squeezenet1_1", "input_shape": [3, 32, 32]}
    run_dir = write_run(tmp_path / "run", record, model.state_dict())
    assert run([str(run_dir), "--format", "onnx"]) == 0
    images = torch.randn(8, 3, 32, 32)
    assert_same(
        run_dir / "model.onnx",
        torchvision.models.get_model("squeezenet1_1", num_classes=10),
        model.state_dict(),
        images,
    )


def test_your_own_module_exports(tmp_path):
    own = TinyNet(width=6)
    record = {"name": "custom", "_target_": "own_nets.TinyNet", "args": {"width": 6}, "input_shape": [1, 28, 28]}
    run_dir = write_run(tmp_path / "run", record, own.state_dict())
    assert run([str(run_dir), "--format", "onnx"]) == 0
    assert_same(run_dir / "model.onnx", TinyNet(width=6), own.state_dict(), torch.randn(4, 1, 28, 28))


def test_an_operator_without_an_onnx_translation_is_refused_in_one_line(tmp_path, capsys):
    from own_nets import Eigen

    record = {"name": "custom", "_target_": "own_nets.Eigen", "args": None, "input_shape": [1, 28, 28]}
    run_dir = write_run(tmp_path / "run", record, Eigen().state_dict())
    assert run([str(run_dir), "--format", "onnx"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"{ERROR}own_nets.Eigen cannot be exported to ONNX: No ONNX function found for ")
    assert "linalg_eig" in captured.err and captured.err.count("\n") == 1 and captured.out == ""
    assert not (run_dir / "model.onnx").exists()


def test_a_graph_that_does_not_compute_model_pt_is_deleted_and_refused(tmp_path, capsys, monkeypatch):
    state = lenet300_with_dead_units()
    run_dir = write_run(tmp_path / "run", {"name": "lenet300"}, state)
    build = cli.build_dense_model

    def perturbed(exported, spec=None):  # a compaction that went wrong: one weight off by 1e-2
        model = build(exported, spec)
        with torch.no_grad():
            model.fc3.weight[0, 0] += 1e-2
        return model

    monkeypatch.setattr(cli, "build_dense_model", perturbed)
    assert run([str(run_dir), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    refusal = f"{ERROR}{run_dir / 'model.onnx'} does not compute model.pt on 1,000 fixed random inputs (run.json names"
    assert err.startswith(refusal) and " no data set): 0 top-1 predictions differ, " in err and err.count("\n") == 1
    assert "largest |logit difference|" in err and not (run_dir / "model.onnx").exists()


def test_the_check_counts_differing_predictions_and_logits():
    good = onnx_export.OnnxCheck("test images", 1000, 0, 1e-5)
    assert good.passed and not onnx_export.OnnxCheck("test images", 1000, 1, 0.0).passed
    assert not onnx_export.OnnxCheck("test images", 1000, 0, 2e-4).passed


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx", "onnxscript"])
def test_without_the_onnx_extra_the_format_is_refused_in_one_line(tmp_path, capsys, monkeypatch, missing):
    run_dir = write_run(tmp_path / "run", {"name": "lenet300"}, lenet300_with_dead_units())
    monkeypatch.setitem(sys.modules, missing, None)
    assert run([str(run_dir), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err == f'{ERROR}--format onnx needs {missing} (onnx, onnxruntime, onnxscript): pip install -e ".[onnx]"\n'


def test_all_writes_the_sparse_formats_but_not_onnx(tmp_path):
    run_dir = write_run(tmp_path / "run", {"name": "lenet300"}, lenet300_with_dead_units())
    assert run([str(run_dir), "--format", "all"]) == 0
    assert (run_dir / "model_sparse.pt").exists() and not (run_dir / "model.onnx").exists()


@pytest.mark.slow
def test_the_installed_command_writes_model_onnx(tmp_path):
    state = lenet300_with_dead_units()
    run_dir = write_run(tmp_path / "run", {"name": "lenet300"}, state)
    command = [str(Path(sys.executable).parent / "prune-export"), str(run_dir), "--format", "onnx"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "model.onnx" in result.stdout and "[torch.onnx]" not in result.stdout
    images = torch.from_numpy(np.random.default_rng(3).standard_normal((16, 1, 28, 28), dtype=np.float32))
    assert_same(run_dir / "model.onnx", get_model_spec("lenet300").build(10), state, images)
