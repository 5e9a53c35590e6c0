"""`prune-report` on hand-made run directories whose numbers are known, so every frame value is checked exactly."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
import torch

from pruning_cli.models import get_model_spec
from pruning_cli.records.contract import RUN_RECORD
from pruning_cli.report.cli import run
from pruning_cli.report.collect import Skipped, collect, method_label
from pruning_cli.report.plots import plot_frontier, plot_sensitivity
from pruning_cli.report.tables import (
    layer_tables,
    layers_markdown,
    markdown_table,
    search_curves,
    table1,
    table1_markdown,
)
from pruning_cli.sparse.export import export_state_dict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS_HEADER = "iteration,phase,epochs,params_total,params_nonzero,compression,top1,top5,loss,train_loss,seconds\n"
LAYERS_HEADER = "iteration,phase,layer,weights_total,weights_nonzero,kept,std,sensitivity,threshold,flops_total,"
# LeNet-300-100 at the paper's kept fractions: 18,816 + 2,700 + 260 weights and 410 biases = 22,186 parameters.
FINAL_LAYERS = [
    # layer, weights, non-zero, flops, non-zero flops, inputs_nonzero
    ("fc1", 235_200, 18_816, 470_400, 37_632, 0.19),
    ("fc2", 30_000, 2_700, 60_000, 5_400, 0.40),
    ("fc3", 1_000, 260, 2_000, 520, 0.65),
]


def config(model="lenet300", dataset="fashion_mnist", seed=0, name="iterative", iterations=2, epochs=1, **regs):
    """The `config` part of a run.json (the keys the report reads; the others count as their defaults)."""
    task = {"name": "sensitivity", "level": None} if name == "sensitivity" else {"name": "prune"}
    return {
        "model": {"name": model},
        "dataset": {"name": dataset, "root": "~/data"},
        "task": task,
        "train": {"epochs": 2, "regularization": regs.get("train", "l2"), "checkpoint": None},
        "retrain": {"epochs": epochs, "regularization": regs.get("retrain", "l2")},
        "pruning": {"name": "iterative" if name == "sensitivity" else name, "iterations": iterations, "kept": None},
        "seed": seed,
    }


def write_run(directory: Path, cfg: dict, metrics: str | None = None, layers: str | None = None, model_pt=True):
    """A run directory as prune-run leaves it; `metrics` / `layers` are the CSV bodies without header."""
    directory.mkdir(parents=True)
    (directory / RUN_RECORD).write_text(json.dumps({"format": 1, "config": cfg}))
    if metrics is not None:
        (directory / "metrics.csv").write_text(METRICS_HEADER + metrics)
    if layers is not None:
        (directory / "layers.csv").write_text(layers)
    if model_pt:
        dense = get_model_spec("lenet300").build(10).state_dict()
        pruned = {key: value.clone() for key, value in dense.items()}
        for name, _total, kept, *_ in FINAL_LAYERS:  # keep the largest weights, as magnitude pruning does
            weight = pruned[f"{name}.weight"]
            threshold = weight.abs().flatten().kthvalue(weight.numel() - kept).values
            weight[weight.abs() <= threshold] = 0
        torch.save(pruned, directory / "model.pt")
        (directory / "checkpoints").mkdir()
        torch.save({"model": dense, "iteration": 0}, directory / "checkpoints" / "dense.pt")


def lenet300_layers(final: tuple[int, str], inputs: bool = True) -> str:
    header = LAYERS_HEADER + ("flops_nonzero,inputs_nonzero\n" if inputs else "flops_nonzero\n")
    rows = []
    for name, total, nonzero, flops, flops_nonzero, inputs_nonzero in FINAL_LAYERS:
        extra = f",{inputs_nonzero}" if inputs else ""
        rows.append(f"0,train,{name},{total},{total},1,,,,{flops},{flops}{extra}")
        rows.append(
            f"{final[0]},{final[1]},{name},{total},{nonzero},{nonzero / total},,,,{flops},{flops_nonzero}{extra}"
        )
    return header + "\n".join(rows) + "\n"


def sweep_metrics(dense: tuple[float, float], final: tuple[float, float]) -> str:
    return (
        f"0,train,2,266610,266610,1,{dense[0]},{dense[1]},0.1,0.05,10\n"
        "1,prune,0,266610,100000,2.6661,0.97,0.998,0.2,nan,0.5\n"
        "1,retrain,1,266610,100000,2.6661,0.979,0.999,0.12,0.06,5\n"
        "2,prune,0,266610,22186,12.01704,0.96,0.997,0.3,nan,0.5\n"
        f"2,retrain,1,266610,22186,12.01704,{final[0]},{final[1]},0.11,0.05,5\n"
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A 2-job multirun sweep, a one-shot L1 run that meets the paper, an AlexNet run, and broken runs."""
    root = tmp_path_factory.mktemp("runs")
    sweep = root / "sweep"
    write_run(
        sweep / "0", config(seed=0), sweep_metrics((0.98, 0.999), (0.981, 0.9995)), lenet300_layers((2, "retrain"))
    )
    write_run(
        sweep / "1", config(seed=1), sweep_metrics((0.979, 0.999), (0.977, 0.9985)), lenet300_layers((2, "retrain"))
    )
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    oneshot = config(dataset="mnist", name="oneshot", iterations=1, epochs=0, train="l1")
    metrics = (
        "0,train,2,266610,266610,1,0.9836,0.9995,0.1,0.05,3\n1,prune,0,266610,22000,12.11864,0.9841,0.999,0.2,,1\n"
    )
    write_run(root / "oneshot", oneshot, metrics, lenet300_layers((1, "prune"), inputs=False))
    alexnet = config(model="alexnet", dataset="synthetic_imagenet", iterations=1)
    metrics = (
        "0,train,2,61100840,61100840,1,0.5722,0.8027,1,1,100\n"
        "1,prune,0,61100840,6700000,9.119528,0.5,0.7,2,,1\n"
        "1,retrain,1,61100840,6700000,9.119528,0.5723,0.8033,1,1,50\n"
    )
    write_run(root / "alexnet", alexnet, metrics, model_pt=False)
    (root / "alexnet" / "model.pt").write_bytes(b"not read: alexnet has no registry entry for histograms")
    truncated = sweep_metrics((0.98, 0.999), (0.981, 0.9995))[:-9]  # cut inside the last row
    write_run(root / "broken_truncated", config(), truncated, lenet300_layers((2, "retrain")))
    write_run(root / "broken_nometrics", config())
    write_run(
        root / "broken_dense_only", config(), "0,train,2,266610,266610,1,0.98,0.999,0.1,0.05,10\n", model_pt=False
    )
    return root


@pytest.fixture(scope="module")
def collection(runs):
    return collect([runs / "sweep", runs / "oneshot", runs / "alexnet", *sorted(runs.glob("broken_*"))])


def test_runs_frame_has_one_row_per_finished_run_with_hand_computed_values(collection):
    got = collection.runs[
        ["run", "model", "dataset", "seed", "method", "dense_top1", "final_top1", "error_change_top1"]
        + ["error_change_top5", "params_total", "params_nonzero", "compression", "seconds"]
    ]
    expected = pd.DataFrame(
        [
            ["sweep/0", "lenet300", "fashion_mnist", 0, "L2, iterative, retrain", 0.98, 0.981, -0.1, -0.05,
             266_610, 22_186, 266_610 / 22_186, 21.0],
            ["sweep/1", "lenet300", "fashion_mnist", 1, "L2, iterative, retrain", 0.979, 0.977, 0.2, 0.05,
             266_610, 22_186, 266_610 / 22_186, 21.0],
            ["oneshot", "lenet300", "mnist", 0, "L1, one-shot, no retrain", 0.9836, 0.9841, -0.05, 0.05,
             266_610, 22_000, 266_610 / 22_000, 4.0],
            ["alexnet", "alexnet", "synthetic_imagenet", 0, "L2, one-shot, retrain", 0.5722, 0.5723, -0.01, -0.06,
             61_100_840, 6_700_000, 61_100_840 / 6_700_000, 151.0],
        ],
        columns=got.columns,
    )  # fmt: skip
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=False, rtol=1e-9, atol=1e-9)
    assert collection.runs.setting.tolist() == ["", "", "", ""]  # the sweep's jobs differ only in their seed


def test_metrics_and_layers_frames_are_tidy(collection):
    assert len(collection.metrics) == 5 + 5 + 2 + 3
    assert collection.metrics.groupby("run", sort=False).size().to_dict() == {
        "sweep/0": 5, "sweep/1": 5, "oneshot": 2, "alexnet": 3,
    }  # fmt: skip
    assert set(collection.metrics.method) == {
        "L2, iterative, retrain",
        "L1, one-shot, no retrain",
        "L2, one-shot, retrain",
    }
    layers = collection.layers
    assert len(layers) == 3 * 6 and set(layers.run) == {"sweep/0", "sweep/1", "oneshot"}
    assert layers[layers.run == "oneshot"].inputs_nonzero.isna().all()  # an older run without the column


def test_broken_runs_are_skipped_with_their_reason(collection):
    reasons = {item.path.name: item.reason for item in collection.skipped}
    assert reasons == {
        "alexnet": "no layers.csv: per-layer rows left out (the run is kept)",
        "broken_dense_only": "metrics.csv has only the dense row; no model.pt (unfinished run?)",
        "broken_nometrics": "no metrics.csv",
        "broken_truncated": "metrics.csv ends mid-row (truncated file?)",
    }
    assert not any(run.startswith("broken") for run in collection.runs.run)
    assert "alexnet" in set(collection.runs.run)


def test_storage_of_each_run_is_what_prune_export_reports(collection, runs):
    row = collection.runs.set_index("run").loc["oneshot"]
    assert row.dense_bytes == 266_610 * 4  # every parameter as float32
    state = torch.load(runs / "oneshot" / "model.pt", weights_only=True)
    total = export_state_dict(state, "lenet300", remove_dead=True)[1].set_index("layer").loc["total"]
    assert (row.csr_bytes, row.compact_bytes) == (total.csr_bytes, total.compact_bytes)
    assert 9 < row.dense_bytes / row.compact_bytes < 12  # 12x fewer weights, each with a 5-bit index
    storage = collection.storage[collection.storage.run == "oneshot"].set_index("layer")
    assert storage.loc["fc1", "dense_bytes"] == 784 * 300 * 4
    assert storage.loc[["fc1", "fc2", "fc3", "biases+other"], "compact_bytes"].sum() == row.compact_bytes
    alexnet = collection.runs.set_index("run").loc["alexnet"]
    assert pd.isna(alexnet.compact_bytes)  # its model.pt is not a torch file: storage left out, run kept
    assert Skipped(runs / "alexnet", "model.pt cannot be sized (UserError): storage left out (the run is kept)") in (
        collection.skipped
    )

    table = table1(collection.runs).set_index("network").loc["LeNet-300-100"].set_index("dataset").loc["mnist"]
    expected = f"1.07 MB -> {table.csr_bytes / 1e3:.3g} KB / {table.compact_bytes / 1e3:.3g} KB"
    assert f"| {expected} ({table.storage_ratio:.1f}x) |" in table1_markdown(table1(collection.runs))


def test_table1_means_over_seeds_and_compares_with_the_paper(collection):
    table = table1(collection.runs).set_index("network")
    lenet = table.loc["LeNet-300-100"].set_index("dataset")
    sweep, oneshot = lenet.loc["fashion_mnist"], lenet.loc["mnist"]
    assert sweep.n == 2
    assert sweep.dense_top1_err == pytest.approx(2.05) and sweep.pruned_top1_err == pytest.approx(2.10)
    assert sweep.error_change_top1 == pytest.approx(0.05)
    assert sweep.error_change_top1_std == pytest.approx(0.3 / 2**0.5)
    assert sweep.paper_error_change_top1 == pytest.approx(-0.05)
    assert sweep.error_change_vs_paper == pytest.approx(0.10)
    assert sweep.compression_vs_paper == pytest.approx(266_610 / 22_186 / 12)
    assert not sweep.meets_paper  # 12.0x is enough, but it lost 0.05 points where the paper gained 0.05
    assert oneshot.meets_paper  # exactly the paper's -0.05 points, 12.1x
    alexnet = table.loc["AlexNet"]
    assert alexnet.error_change_top1 == pytest.approx(-0.01) and alexnet.error_change_top5 == pytest.approx(-0.06)
    assert alexnet.paper_compression == 9 and alexnet.meets_paper
    assert not table1(collection.runs, tolerance=-0.01).set_index("network").loc["AlexNet"].meets_paper

    text = table1_markdown(table1(collection.runs))
    assert (
        "| LeNet-300-100 | fashion_mnist | L2, iterative, retrain | 2 | 2.05% | 2.10% | +0.05 ± 0.21 | "
        "MNIST: 1.64% -> 1.59% | -0.05 | +0.10 | 266.6K -> 22.2K | 267K -> 22K | 12.0x | 12x | 1.07 MB -> "
    ) in text
    assert "| LeNet-300-100 | mnist | L1, one-shot, no retrain | 1 | 1.64% | 1.59% | +0.05 |" not in text
    assert "| LeNet-300-100 | mnist | L1, one-shot, no retrain | 1 | 1.64% | 1.59% | -0.05 |" in text
    assert (
        "| AlexNet | synthetic_imagenet | L2, one-shot, retrain | 1 | 42.78% / 19.73% | 42.77% / 19.67% | "
        "-0.01 / -0.06 | ImageNet: 42.78% / 19.73% -> 42.77% / 19.67% | -0.01 / -0.06 | +0.00 / +0.00 | "
        "61.1M -> 6.7M | 61M -> 6.7M | 9.1x | 9x | n/a | yes |"
    ) in text
    assert "setting" not in text  # no two runs of one method differ in anything but the seed


def test_runs_that_differ_beyond_the_seed_are_not_averaged(tmp_path):
    metrics = sweep_metrics((0.98, 0.999), (0.981, 0.9995))
    write_run(tmp_path / "a", config(), metrics, model_pt=True)
    write_run(tmp_path / "b", {**config(), "retrain": {"epochs": 3, "regularization": "l2"}}, metrics)
    found = collect([tmp_path])
    assert found.runs.setting.tolist() == ["retrain.epochs=1", "retrain.epochs=3"]
    assert table1(found.runs).n.tolist() == [1, 1]


def test_a_key_an_older_run_lacks_counts_as_its_default(tmp_path):
    metrics = sweep_metrics((0.98, 0.999), (0.981, 0.9995))
    write_run(tmp_path / "old", config(seed=1), metrics)  # written before dataset.val_split existed
    write_run(tmp_path / "new", {**config(seed=2), "dataset": {**config()["dataset"], "val_split": 0}}, metrics)
    write_run(tmp_path / "held_out", {**config(seed=3), "dataset": {**config()["dataset"], "val_split": 500}}, metrics)
    found = collect([tmp_path])
    settings = dict(zip(found.runs.seed, found.runs.setting, strict=True))
    assert settings == {1: "dataset.val_split=0", 2: "dataset.val_split=0", 3: "dataset.val_split=500"}
    assert sorted(table1(found.runs).n.tolist()) == [1, 2]


def test_a_pruning_key_an_older_run_lacks_counts_as_its_policys_default(tmp_path):
    """The pruning keys' defaults are those of each run's own policy (the run's schema holds only `name`)."""
    metrics = sweep_metrics((0.98, 0.999), (0.981, 0.9995))
    write_run(tmp_path / "old", config(seed=1), metrics)  # written before pruning.alternate existed
    newer = config(seed=2)
    newer["pruning"] = {**newer["pruning"], "alternate": False, "std": "surviving"}
    write_run(tmp_path / "new", newer, metrics)
    found = collect([tmp_path])
    assert found.runs.setting.tolist() == ["", ""] and table1(found.runs).n.tolist() == [2]


def test_layer_table_of_the_final_model_beside_the_paper(collection):
    tables = layer_tables(collection.layers, collection.metrics)
    assert list(tables) == ["lenet300"]
    table = tables["lenet300"]
    sweep = table[table.dataset == "fashion_mnist"].set_index("layer")
    assert sweep.index.tolist() == ["fc1", "fc2", "fc3", "total"]
    assert sweep.n.tolist() == [2, 2, 2, 2]
    assert sweep.weights.tolist() == [235_200, 30_000, 1_000, 266_200]
    assert sweep.flops.tolist() == [470_400, 60_000, 2_000, 532_400]
    # an fc layer's output is the next layer's input: fc1 -> fc2's 40%, fc2 -> fc3's 65%, fc3 (logits) 100%
    assert sweep.activations_nonzero_pct.tolist()[:3] == pytest.approx([40, 65, 100])
    assert sweep.weights_kept_pct.tolist() == pytest.approx([8, 9, 26, 100 * 21_776 / 266_200])
    assert sweep.flops_kept_pct.tolist() == pytest.approx([8, 9, 26, 100 * 43_552 / 532_400])
    assert sweep.paper_weights_kept_pct.tolist() == [8, 9, 26, 8]
    assert sweep.weights_kept_vs_paper.tolist() == pytest.approx([0, 0, 0, 100 * 21_776 / 266_200 - 8])
    oneshot = table[table.dataset == "mnist"].set_index("layer")
    assert oneshot.activations_nonzero_pct.isna().tolist() == [True, True, False, True]
    assert oneshot.dense_bytes.isna().all()  # no storage frame given


def test_layer_table_shows_bytes_dense_and_compact(collection):
    table = layer_tables(collection.layers, collection.metrics, collection.storage)["lenet300"]
    oneshot = table[table.dataset == "mnist"].set_index("layer")
    assert oneshot.dense_bytes.tolist() == [940_800, 120_000, 4_000, 1_064_800]
    storage = collection.storage[collection.storage.run == "oneshot"].set_index("layer").compact_bytes
    assert oneshot.compact_bytes.tolist() == [*storage[["fc1", "fc2", "fc3"]], storage[["fc1", "fc2", "fc3"]].sum()]
    text = layers_markdown("lenet300", table)
    assert f"| 941 KB -> {storage['fc1'] / 1e3:.3g} KB ({940_800 / storage['fc1']:.1f}x) |" in text


def test_method_labels_follow_the_config():
    def label(**kwargs):
        return method_label(config(**kwargs))["method"]

    assert label() == "L2, iterative, retrain"
    assert label(name="oneshot", iterations=1, epochs=0, train="l1") == "L1, one-shot, no retrain"
    assert label(train="l1", retrain="l2") == "L1/L2, iterative, retrain"
    assert label(name="sensitivity") == "L2, sensitivity analysis"
    assert method_label({"model": {"name": "lenet5"}})["method"] == "?, ?, retrain"
    assert label(name="global", iterations=5) == "L2, global, retrain"  # a policy by its own name, not "iterative"
    assert label(name="gradual", iterations=None) == "L2, gradual, retrain"
    distilled = config(name="lamp")
    distilled["retrain"]["distill"] = {"weight": 0.5, "temperature": 4.0}
    assert method_label(distilled)["method"] == "L2, lamp, retrain, distilled"


def test_methods_are_drawn_and_tabulated_side_by_side_with_their_spread_over_seeds(tmp_path, capsys):
    """Two methods at two targets over two seeds each: one curve per method, one table row per (method, target)."""
    for method in ("global", "lamp"):
        for target, final in ((12, 22186), (24, 11093)):
            for seed, top1 in ((0, 0.97), (1, 0.96)):
                cfg = config(name=method, seed=seed)
                cfg["pruning"]["target"] = target
                drop = 0.01 * (target // 12) + (0.005 if method == "lamp" else 0)
                metrics = (
                    "0,train,2,266610,266610,1,0.98,0.999,0.1,0.05,10\n"
                    f"1,retrain,1,266610,{final},{266610 / final},{top1 + 0.02 - drop},0.999,0.1,0.05,5\n"
                )
                write_run(tmp_path / "runs" / f"{method}_{target}_{seed}", cfg, metrics)
    assert run([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    assert is_png(tmp_path / "report" / "methods_lenet300.png")
    table = pd.read_csv(tmp_path / "report" / "methods_lenet300.csv")
    assert table.method.tolist() == ["L2, global, retrain"] * 2 + ["L2, lamp, retrain"] * 2
    assert table.n.tolist() == [2, 2, 2, 2] and table.compression.round(2).tolist() == [12.02, 24.03] * 2
    # top-1 of seeds 0 and 1: 0.99 - drop and 0.98 - drop against a dense 0.98: lost drop - 1 and drop points
    assert table.error_change_top1.round(3).tolist() == pytest.approx([0.5, 1.5, 1.0, 2.0])
    assert table.error_change_top1_std.round(3).tolist() == pytest.approx([0.707] * 4, abs=1e-3)
    text = (tmp_path / "report" / "methods_lenet300.md").read_text()
    assert "| fashion_mnist | L2, lamp, retrain | 2 | 24.0x | +2.00 ± 0.71 |" in text


def is_png(path: Path) -> bool:
    height, width, *_ = matplotlib.image.imread(path).shape
    return path.read_bytes()[:8] == PNG_MAGIC and height > 100 and width > 100


def test_cli_writes_tables_plots_and_summary(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert run([str(runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("runs.csv", "table1.csv", "table1.md", "layers_lenet300.csv", "layers_lenet300.md"):
        assert (out / name).is_file(), name
    for name in (
        "tradeoff_lenet300",
        "frontier_lenet300",
        "histogram_lenet300",
        "iterations_lenet300",
        "frontier_alexnet",
    ):
        assert is_png(out / f"{name}.png"), name
    assert not (out / "histogram_alexnet.png").exists()
    assert "not drawn: histogram_alexnet.png: " in printed
    assert not (out / "sensitivity_lenet300.png").exists()  # no sensitivity.csv among these runs
    assert (out / "table1.md").read_text() in printed + "\n"
    assert "skipped 5:" in printed and "broken_truncated: metrics.csv ends mid-row (truncated file?)" in printed
    assert pd.read_csv(out / "table1.csv").network.tolist() == ["LeNet-300-100", "LeNet-300-100", "AlexNet"]
    layers_md = (out / "layers_lenet300.md").read_text()
    assert "| fc1 | 235.2K | 470.4K | 40.0% | 8.0% | 8.0% | 8.0% | +0.00 |" in layers_md


def test_sensitivity_frame_and_plot(tmp_path):
    run_dir = tmp_path / "sens"
    write_run(run_dir, config(name="sensitivity"), "0,train,2,266610,266610,1,0.98,0.999,0.1,0.05,10\n", model_pt=False)
    (run_dir / "sensitivity.csv").write_text(
        "layer,sensitivity,threshold,kept,top1,top5,loss\n"
        "none,0,0,1,0.98,0.999,0.1\n"
        "fc1,0.5,0.01,0.6,0.979,0.999,0.1\n"
        "fc1,1.5,0.03,0.2,0.95,0.998,0.2\n"
        "fc2,0.5,0.02,0.62,0.978,0.999,0.1\n"
        "fc2,1.5,0.06,0.25,0.90,0.99,0.4\n"
    )
    found = collect([run_dir])
    assert found.runs.empty and found.skipped == []  # a sensitivity run has no pruned model, and needs none
    got = found.sensitivity[["run", "model", "method", "layer", "kept", "pruned", "top1"]]
    expected = pd.DataFrame(
        {
            "run": ["sens"] * 5,
            "model": ["lenet300"] * 5,
            "method": ["L2, sensitivity analysis"] * 5,
            "layer": ["none", "fc1", "fc1", "fc2", "fc2"],
            "kept": [1, 0.6, 0.2, 0.62, 0.25],
            "pruned": [0, 0.4, 0.8, 0.38, 0.75],
            "top1": [0.98, 0.979, 0.95, 0.978, 0.90],
        }
    )
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    out = tmp_path / "report"
    assert run([str(run_dir), "--out", str(out)]) == 0
    assert is_png(out / "sensitivity_lenet300.png")
    assert not (out / "table1.md").exists() and not (out / "tradeoff_lenet300.png").exists()


def test_markdown_table_escapes_pipes():
    frame = pd.DataFrame({"a": ["x|y"], "b": [1]})
    assert markdown_table(frame) == "| a | b |\n|---|---|\n| x\\|y | 1 |"


def report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pruning_cli.report.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: DIR"),
        (("does_not_exist",), "does_not_exist does not exist"),
        (("broken",), "no usable run found in broken (skipped "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    write_run(tmp_path / "broken" / "run", config())  # no metrics.csv
    monkeypatch.chdir(tmp_path)
    assert run(list(args)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"prune-report: error: {message}")
    assert captured.err.count("\n") == 1
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_the_installed_command_exits_2_with_one_line(tmp_path):
    result = report_cli("does_not_exist", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr == (
        "prune-report: error: does_not_exist does not exist; give run directories or Hydra multirun directories\n"
    )


def test_each_run_counts_once_and_empty_sweep_jobs_are_named(runs, tmp_path):
    assert collect([runs / "sweep", runs / "sweep" / "0"]).runs.run.tolist() == ["sweep/0", "sweep/1"]
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", config(), sweep_metrics((0.98, 0.999), (0.981, 0.9995)), lenet300_layers((2, "retrain")))
    (sweep / "1").mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    found = collect([sweep])
    assert found.runs.run.tolist() == ["sweep/0"]
    assert [(item.path.name, item.reason) for item in found.skipped] == [
        ("1", "multirun job without run.json (did the job start?)")
    ]


def test_a_sensitivity_sweep_with_one_point_per_job_makes_whole_lines(tmp_path):
    sweep = tmp_path / "sens_sweep"
    for job, (level, kept, top1) in enumerate([(0.5, 0.7, 0.97), (1.0, 0.4, 0.9)]):
        cfg = config(name="sensitivity", iterations=0)
        write_run(sweep / str(job), {**cfg, "task": {**cfg["task"], "level": level}}, model_pt=False)
        (sweep / str(job) / "sensitivity.csv").write_text(
            f"layer,sensitivity,threshold,kept,top1,top5,loss\nnone,0,0,1,0.98,0.999,0.1\nfc1,{level},0.1,{kept},{top1},1,1\n"
        )
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    found = collect([sweep])
    assert found.sensitivity.layer.tolist() == ["none", "fc1", "none", "fc1"]
    assert found.sensitivity.setting.tolist() == ["task.level=0.5"] * 2 + ["task.level=1.0"] * 2
    assert plot_sensitivity(found.sensitivity, "lenet300", tmp_path / "s.png") is None
    assert is_png(tmp_path / "s.png")


def test_runs_with_a_validation_split_carry_its_top1_for_choices_between_them(tmp_path):
    header = METRICS_HEADER.replace("loss,train_loss", "loss,val_top1,val_loss,train_loss")
    rows = (
        "0,train,2,266610,266610,1,0.98,0.999,0.1,0.975,0.12,0.05,10\n"
        "1,prune,0,266610,22186,12.01704,0.96,0.997,0.3,0.955,0.31,,0.5\n"
        "1,retrain,1,266610,22186,12.01704,0.979,0.999,0.11,0.972,0.13,0.05,5\n"
    )
    held_out = {**config(iterations=1), "dataset": {"name": "fashion_mnist", "val_split": 5000}}
    write_run(tmp_path / "held_out", held_out)
    (tmp_path / "held_out" / "metrics.csv").write_text(header + rows)
    write_run(tmp_path / "without", config(), sweep_metrics((0.98, 0.999), (0.981, 0.9995)))
    found = collect([tmp_path / "held_out", tmp_path / "without"]).runs.set_index("run")
    assert found.loc["held_out", ["dense_val_top1", "final_val_top1"]].tolist() == [0.975, 0.972]
    assert found.loc["without", ["dense_val_top1", "final_val_top1"]].isna().all()


def test_a_walks_tested_steps_are_its_measured_curve_and_are_drawn_on_the_frontier(tmp_path):
    """Each retrained walk step of a pruning=auto run (a retraining row with a verdict): its compression and the
    validation top-1 it lost to the dense model, in points; the one past the budget included (it is part of the
    curve). Other methods have none."""
    header = METRICS_HEADER.replace("loss,train_loss", "loss,val_top1,val_loss,train_loss").rstrip("\n") + ",verdict\n"
    rows = (
        "0,train,2,266610,266610,1,0.98,0.999,0.1,0.975,0.12,0.05,10,\n"
        "1,prune,0,266610,266610,1,0.98,0.999,0.1,0.975,0.12,,0.5,\n"
        "1,retrain,1,266610,33326,8,0.979,0.999,0.11,0.976,0.13,0.05,5,within\n"
        "2,prune,0,266610,33326,8,0.979,0.999,0.11,0.976,0.13,,0.5,\n"
        "2,retrain,1,266610,16663,16,0.97,0.999,0.11,0.969,0.13,0.05,5,past\n"
        "2,rollback,0,266610,33326,8,0.979,0.999,0.11,0.976,0.13,,0,\n"
    )
    searched = {**config(name="auto"), "dataset": {"name": "fashion_mnist", "val_split": 5000}}
    searched["pruning"] = {"name": "auto", "max_steps": 2}
    write_run(tmp_path / "auto", searched)
    (tmp_path / "auto" / "metrics.csv").write_text(header + rows)
    write_run(tmp_path / "paper", config(), sweep_metrics((0.98, 0.999), (0.981, 0.9995)))
    found = collect([tmp_path / "auto", tmp_path / "paper"])
    curves = search_curves(found.runs, found.metrics)
    assert curves.run.tolist() == ["auto", "auto"] and curves.compression.tolist() == [8, 16]
    assert curves.val_lost.round(6).tolist() == [-0.1, 0.6]
    figure = tmp_path / "frontier.png"
    assert plot_frontier(found.runs, "lenet300", figure, curves) is None and figure.read_bytes()[:8] == PNG_MAGIC
