"""Trained quantization: k-means weight sharing, centroid fine-tuning that keeps the sharing, the pipeline phase."""

import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
from runs import LENET5_PAPER_KEPT, SMOKE, compose_config, run_in_process, without_wall_time

from pruning_cli.cli import format_summary
from pruning_cli.errors import UserError
from pruning_cli.quantize.kmeans import Codebook, cluster_gradient, kmeans_1d, linear_centroids, quantize_layer
from pruning_cli.quantize.shared import SharedGradients
from pruning_cli.report.collect import collect
from pruning_cli.report.tables import fmt_bytes, layer_tables, layers_markdown, table1, table1_markdown
from pruning_cli.run.plan import plan_run
from pruning_cli.run.pruning_run import run
from pruning_cli.sparse.cli import run as export
from pruning_cli.training.loop import StopRequested

QUANTIZED = [*SMOKE, "pruning.kept={fc1:0.1,fc2:0.1,fc3:0.5}", "quantize=kmeans", "quantize.epochs=2"]


def test_linear_initialisation_spans_the_values_evenly():
    values = torch.tensor([-0.5, -0.1, 0.2, 0.3, 1.5])
    assert torch.allclose(linear_centroids(values, 5), torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5]))
    assert torch.equal(linear_centroids(values, 1), values.mean().reshape(1))


def test_kmeans_finds_separated_clusters_and_their_means():
    values = torch.tensor([-2.0, -2.2, -1.8, 0.9, 1.1, 5.0])
    centroids, assignment = kmeans_1d(values, linear_centroids(values, 3), iterations=20)
    assert torch.allclose(centroids, torch.tensor([-2.0, 1.0, 5.0]))
    assert assignment.tolist() == [0, 0, 0, 1, 1, 2]


def test_a_quantized_layer_shares_at_most_2_to_the_bits_minus_1_values_and_keeps_its_zeros():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(100, 50, generator=generator)
    mask = weight.abs() > 0.8
    book = quantize_layer(weight * mask, mask, bits=3)
    quantized = book.weight()
    assert book.centroids[0] == 0 and len(book.centroids) <= 8
    assert torch.equal(quantized != 0, mask)  # survivors stay non-zero, pruned stay zero
    assert quantized[mask].unique().numel() <= 7
    # each survivor took its nearest shared value
    nearest = (weight[mask][:, None] - book.centroids[1:][None]).abs().argmin(dim=1)
    assert torch.equal(book.assignments[mask] - 1, nearest)


def test_the_cluster_gradient_is_the_sum_over_the_cluster_and_zero_where_pruned():
    book = Codebook(torch.tensor([0.0, -1.0, 1.0]), torch.tensor([[1, 2, 0], [1, 1, 2]]))
    gradient = torch.tensor([[1.0, 10.0, 7.0], [2.0, 3.0, 20.0]])
    positions, clusters = book.survivors()
    shared = cluster_gradient(gradient, 3, positions, clusters)
    assert shared.tolist() == [[6.0, 30.0, 0.0], [6.0, 6.0, 30.0]]


def test_the_cluster_gradient_keeps_a_channels_last_gradient_in_its_format():
    weight = torch.randn(6, 4, 3, 3).to(memory_format=torch.channels_last)
    book = quantize_layer(weight, weight.abs() > 0.5, bits=3)
    gradient = torch.randn(6, 4, 3, 3).to(memory_format=torch.channels_last)
    shared = cluster_gradient(gradient, len(book.centroids), *book.survivors())
    assert shared.is_contiguous(memory_format=torch.channels_last)
    expected = cluster_gradient(gradient.contiguous(), len(book.centroids), *book.survivors())
    assert torch.equal(shared, expected) and torch.equal(shared == 0, weight.abs() <= 0.5)


def test_fine_tuning_through_the_weights_moves_the_shared_values_and_keeps_them_shared():
    """SGD with momentum and weight decay on weights whose gradients are cluster sums: after several steps every
    cluster still holds one value, moved by exactly the step SGD takes on that value with the summed gradient."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(20, 5)
    mask = torch.rand(5, 20) > 0.5
    book = quantize_layer(layer.weight.detach() * mask, mask, bits=2)
    with torch.no_grad():
        layer.weight.copy_(book.weight())
    centroid = book.centroids[1:].clone().requires_grad_()  # the same model, parametrised by the shared values
    optimizers = [
        torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-3) for params in ([layer.weight], [centroid])
    ]
    inputs = torch.randn(8, 20)
    with SharedGradients({"fc": layer.weight}, {"fc": book}):
        for _ in range(5):
            for optimizer in optimizers:
                optimizer.zero_grad()
            torch.nn.functional.linear(inputs, layer.weight, layer.bias).square().sum().backward()
            shared = torch.cat([centroid.new_zeros(1), centroid])[book.assignments] * mask
            torch.nn.functional.linear(inputs, shared, layer.bias.detach()).square().sum().backward()
            for optimizer in optimizers:
                optimizer.step()
    weight = layer.weight.detach()
    assert weight[mask].unique().numel() <= 3 and torch.equal(weight[~mask], torch.zeros_like(weight[~mask]))
    torch.testing.assert_close(weight[mask], centroid.detach()[book.assignments[mask] - 1])
    assert not torch.allclose(centroid.detach(), book.centroids[1:])  # they did move
    assert layer.weight._backward_hooks is None or not layer.weight._backward_hooks  # the hooks are gone


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("quantized")
    run_in_process(out_dir, *QUANTIZED)
    return out_dir


def test_quantization_is_a_logged_phase_after_the_last_retraining(quantized_run):
    metrics = pd.read_csv(quantized_run / "metrics.csv")
    assert metrics.phase.tolist()[-2:] == ["retrain", "quantize"]
    last, quantized = metrics.iloc[-2], metrics.iloc[-1]
    assert quantized.iteration == last.iteration == 3 and quantized.epochs == 2
    assert quantized.params_nonzero == last.params_nonzero  # the masks are fixed
    epochs = pd.read_csv(quantized_run / "epochs.csv")
    assert epochs[epochs.phase == "quantize"].epoch.tolist() == [1, 2]
    layers = pd.read_csv(quantized_run / "layers.csv")
    rows = layers[layers.phase == "quantize"].set_index("layer")
    assert rows.bits.tolist() == [5, 5, 5] and (rows.shared_values <= 31).all() and (rows.shared_values > 1).all()
    assert layers[layers.phase != "quantize"].bits.isna().all()


def test_model_pt_holds_the_fine_tuned_shared_values(quantized_run):
    state = torch.load(quantized_run / "model.pt", weights_only=True)
    rows = pd.read_csv(quantized_run / "layers.csv").query("phase == 'quantize'").set_index("layer")
    before = torch.load(quantized_run / "checkpoints" / "iteration_3.pt", weights_only=True)["model"]
    for layer in ("fc1", "fc2", "fc3"):
        weight = state[f"{layer}.weight"]
        assert weight[weight != 0].unique().numel() == rows.shared_values[layer]
        assert torch.equal(weight != 0, before[f"{layer}.weight"] != 0)


def test_a_run_stopped_during_quantization_resumes_to_the_same_numbers(quantized_run, tmp_path, caplog):
    def in_quantization() -> bool:
        epochs = tmp_path / "epochs.csv"
        return epochs.is_file() and "quantize" in epochs.read_text()

    with pytest.raises(StopRequested):
        run(compose_config(*QUANTIZED), tmp_path, stop_requested=in_quantization)
    assert pd.read_csv(tmp_path / "epochs.csv").phase.tolist()[-1] == "quantize"  # stopped after its first epoch
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pruning_cli.run.recorder"):
        run(compose_config(*QUANTIZED), tmp_path)
    trained = [record.getMessage().split(":")[0] for record in caplog.records if " epoch " in record.getMessage()]
    assert trained == ["quantized fine-tuning epoch 2/2"]  # the resumed run trains only what was left
    for name in ("metrics.csv", "layers.csv", "epochs.csv"):
        pd.testing.assert_frame_equal(without_wall_time(tmp_path / name), without_wall_time(quantized_run / name))
    resumed, uninterrupted = (torch.load(d / "model.pt", weights_only=True) for d in (tmp_path, quantized_run))
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in resumed)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("quantize.fc_bits=0", "quantize.fc_bits is 0; it must be in [1, 8], e.g. quantize.fc_bits=5, its default"),
        ("quantize.conv_bits=9", "quantize.conv_bits is 9; it must be in [1, 8], e.g. quantize.conv_bits=8"),
        ("quantize.lr=0", "quantize.lr is 0.0; it must be > 0"),
        ("quantize.kmeans_iterations=0", "quantize.kmeans_iterations is 0; it must be >= 1"),
    ],
)
def test_bad_quantization_settings_are_refused_in_one_line(override, message):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*QUANTIZED, override))
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_a_sensitivity_analysis_refuses_quantization():
    with pytest.raises(UserError, match="task=sensitivity prunes without training afterwards"):
        plan_run(compose_config(*SMOKE, "task=sensitivity", "quantize=kmeans"))


def test_the_report_gives_the_pruned_model_and_its_quantized_file_beside_deep_compression(quantized_run):
    runs = collect([quantized_run]).runs
    row = runs.iloc[0]
    metrics = pd.read_csv(quantized_run / "metrics.csv")
    assert row.final_top1 == metrics[metrics.phase == "retrain"].top1.iloc[-1]  # the pruned model
    assert row.quantized_top1 == metrics.top1.iloc[-1]
    assert row.quantized_change_top1 == pytest.approx(100 * (row.final_top1 - row.quantized_top1))
    assert export([str(quantized_run), "--format", "deep"]) == 0
    assert row.deep_bytes == (quantized_run / "model_deep.bin").stat().st_size  # the file prune-export writes
    ratio = row.dense_bytes / row.deep_bytes
    assert f"({ratio:.1f}x; Deep Compression 40x)" in table1_markdown(table1(runs))
    collection = collect([quantized_run])
    layers = layer_tables(collection.layers, collection.metrics, collection.storage)["lenet300"].set_index("layer")
    entries = collection.storage.set_index("layer").deep_bytes
    assert layers.deep_bytes[["fc1", "fc2", "fc3"]].tolist() == entries[["fc1", "fc2", "fc3"]].tolist()
    fc1 = entries["fc1"]
    assert f"{fmt_bytes(fc1)} ({784 * 300 * 4 / fc1:.1f}x)" in layers_markdown("lenet300", layers.reset_index())


def test_a_conv_model_quantizes_its_conv_layers_to_8_bits_and_its_fc_layers_to_5(tmp_path):
    """LeNet-5 trains in channels_last (and bf16 on a CPU with AMX): its conv weights and gradients are not
    contiguous, and their shared values must still hold."""
    run_in_process(tmp_path, "model=lenet5", *SMOKE, LENET5_PAPER_KEPT, "quantize=kmeans", "quantize.epochs=1")
    rows = pd.read_csv(tmp_path / "layers.csv").query("phase == 'quantize'").set_index("layer")
    assert rows.bits.to_dict() == {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}
    assert (rows.shared_values <= 2**rows.bits - 1).all() and (rows.shared_values > 1).all()


def test_the_summary_gives_the_pruned_and_the_quantized_model(quantized_run):
    metrics = pd.read_csv(quantized_run / "metrics.csv")
    lines = format_summary(metrics, quantized_run).splitlines()
    pruned, quantized = metrics.iloc[-2], metrics.iloc[-1]
    assert lines[2].split()[:2] == ["pruned", f"{pruned.top1:.2%}"]
    assert lines[3].split()[:2] == ["quantized", f"{quantized.top1:.2%}"]
    assert lines[-1].startswith(f"quantization: {100 * (quantized.top1 - pruned.top1):+.2f} points against the pruned")
