"""The paper's figures from the collected frames: sensitivity (Fig. 6), accuracy vs pruning trade-off (Fig. 5),
weight histograms before/after (Fig. 7), and a run's progress per iteration. PNG files, matplotlib's Agg backend.

Each `plot_*` returns None when it wrote its file, or the reason it drew nothing (no data, matplotlib missing),
so the report can say why a figure is absent instead of failing.
"""

import math
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from pruning_cli.paper import LATER_WORK, PAPER_TABLE1, network_name
from pruning_cli.records.contract import DENSE_CHECKPOINT, MODEL_FILE
from pruning_cli.report.tables import method_curves, search_curves

DPI = 110
MAX_LEGEND = 12  # beyond this many lines a legend hides the plot


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display on servers), or None when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


NO_MATPLOTLIB = "matplotlib is not installed (pip install matplotlib, or the package's [plots] extra)"


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    _pyplot().close(figure)


def _title(model: str, datasets: pd.Series) -> str:
    return f"{network_name(model)} ({', '.join(sorted({str(d) for d in datasets}))})"


def _begin(frame: pd.DataFrame, model: str, missing: str) -> tuple[pd.DataFrame, Any, Any, Any] | str:
    """The model's rows and a new figure (pyplot, figure, axes), or why there is no figure: `missing` when the model
    has no rows, or matplotlib is not installed."""
    data = frame[frame.model == model]
    if data.empty:
        return missing
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    figure, axes = plt.subplots(figsize=(7, 4.5))
    return data, plt, figure, axes


def plot_sensitivity(sensitivity: pd.DataFrame, model: str, path: Path) -> str | None:
    """Fig. 6: top-1 accuracy vs fraction of a layer's weights pruned, one line per layer, no retraining.

    Rows of all the model's analysis runs are pooled per layer and level (a sweep may run one point per job;
    seeds at one level are averaged), so a line is whole whichever way the analysis was split up.
    """
    started = _begin(sensitivity, model, "no sensitivity.csv")
    if isinstance(started, str):
        return started
    data, plt, figure, axes = started
    several = data.dataset.nunique() > 1
    data = data.assign(level=data.sensitivity.round(3).fillna(data.kept.round(3)))
    for dataset, part in data.groupby("dataset", sort=False):
        baseline = part[part.layer == "none"].top1.mean()
        if not math.isnan(baseline):
            axes.axhline(100 * baseline, color="grey", linestyle=":", linewidth=1)
        for layer, rows in part[part.layer != "none"].groupby("layer", sort=False):
            points = rows.groupby("level")[["pruned", "top1"]].mean().sort_values("pruned")
            xs, ys = list(100 * points.pruned), list(100 * points.top1)
            if not math.isnan(baseline) and xs[0] > 0:
                xs, ys = [0.0, *xs], [100 * baseline, *ys]  # every layer starts from the unpruned model
            axes.plot(xs, ys, marker="o", markersize=3, label=f"{layer} ({dataset})" if several else str(layer))
    axes.set_xlabel("parameters pruned away in the layer (%)")
    axes.set_ylabel("top-1 accuracy (%), no retraining")
    axes.set_title(f"Sensitivity: {_title(model, data.dataset)}")
    axes.grid(alpha=0.3)
    _legend(axes)
    _save(figure, path)
    return None


def plot_tradeoff(runs: pd.DataFrame, model: str, path: Path) -> str | None:
    """Fig. 5: accuracy lost (points) vs fraction of parameters pruned, one line per method, a point per run."""
    started = _begin(runs, model, "no finished pruning run")
    if isinstance(started, str):
        return started
    data, plt, figure, axes = started
    data = data.assign(pruned=(100 * (1 - data.params_nonzero / data.params_total)).round(2))
    several_datasets = data.dataset.nunique() > 1
    # One line per method across everything else a sweep varies (the pruning level is the x axis); seeds at the
    # same level are averaged on the line and shown as faint points.
    for (dataset, method), part in data.groupby(["dataset", "method"], sort=False):
        mean = part.groupby("pruned").error_change_top1.mean()
        label = f"{method} ({dataset})" if several_datasets else str(method)
        line = axes.plot(mean.index, mean.to_numpy(), marker="o", label=label)[0]
        if len(part) > len(mean):
            axes.scatter(part.pruned, part.error_change_top1, color=line.get_color(), alpha=0.35, s=12)
    axes.axhline(0, color="grey", linewidth=1)
    axes.set_xlabel("parameters pruned away (%)")
    axes.set_ylabel("accuracy loss (top-1, points)")
    axes.set_title(f"Accuracy vs pruning: {_title(model, data.dataset)}")
    axes.grid(alpha=0.3)
    _legend(axes)
    _save(figure, path)
    return None


def plot_frontier(runs: pd.DataFrame, model: str, path: Path, searches: pd.DataFrame | None = None) -> str | None:
    """Compression (log scale) against the change in test top-1 of every run, one colour per method, with the
    paper's point and later work's published compression marked as references (measured on MNIST / ImageNet);
    each budgeted walk's steps (tables.search_curves: validation top-1 lost) as a dotted curve."""
    started = _begin(runs, model, "no finished pruning run")
    if isinstance(started, str):
        return started
    data, plt, figure, axes = started
    tried = searches[searches.model == model] if searches is not None else pd.DataFrame()
    for number, (_, part) in enumerate(tried.groupby("run", sort=False)):
        part = part.sort_values("compression")
        label = "walk steps (validation)" if number == 0 else None
        axes.plot(part.compression, part.val_lost, ":", marker=".", color="grey", alpha=0.7, label=label)
    for method, part in data.groupby("method", sort=False):
        axes.scatter(part.compression, part.error_change_top1, label=str(method), s=24)
    paper = PAPER_TABLE1.get(model)
    if paper is not None:
        change = paper.pruned_top1 - paper.dense_top1  # pruned error - dense error: the accuracy lost
        axes.scatter([paper.compression], [change], marker="*", s=160, color="black", label=f"paper ({paper.dataset})")
    for work, compressions in LATER_WORK.items():
        if model in compressions:
            axes.scatter([compressions[model]], [0.0], marker="D", s=60, color="grey", label=f"{work} (no loss)")
    title = f"Compression frontier: {_title(model, data.dataset)}"
    _finish_compression_axes(plt, figure, axes, "accuracy loss (top-1, points)", title, path)
    return None


def plot_methods(curves: pd.DataFrame, model: str, path: Path) -> str | None:
    """One accuracy-against-compression curve per method (tables.method_curves): mean over seeds, the std as error
    bars, compression on a log scale."""
    started = _begin(curves, model, "no finished pruning run")
    if isinstance(started, str):
        return started
    data, plt, figure, axes = started
    several_datasets = data.dataset.nunique() > 1
    for (dataset, method), part in data.groupby(["dataset", "method"], sort=False):
        label = f"{method} ({dataset})" if several_datasets else str(method)
        spread = part.error_change_top1_std.fillna(0).to_numpy()
        axes.errorbar(part.compression, part.error_change_top1, yerr=spread, marker="o", capsize=3, label=label)
    ylabel = "accuracy loss (top-1, points; mean ± std over seeds)"
    _finish_compression_axes(plt, figure, axes, ylabel, f"Pruning methods: {_title(model, data.dataset)}", path)
    return None


def _minor_tick(value: float, _position: int) -> str:
    """2x, 3x, 5x (20x, 30x, 50x ...) labelled between the decades; 4x and 6x-9x not, so labels never crowd."""
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0
    return f"{value:g}x" if mantissa in (2, 3, 5) else ""


def _finish_compression_axes(plt: Any, figure: Any, axes: Any, ylabel: str, title: str, path: Path) -> None:
    """Compression on a log axis (ticks as 12x, 24x ...), the zero line, labels, legend; then save the figure."""
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(plt.FuncFormatter(lambda value, _position: f"{value:g}x"))
    axes.xaxis.set_minor_formatter(plt.FuncFormatter(_minor_tick))
    axes.axhline(0, color="grey", linewidth=1)
    axes.set_xlabel("compression (parameters before / after, log scale)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    _legend(axes)
    _save(figure, path)


def histogram_layer(model: str) -> tuple[str, str] | None:
    """The layer of Fig. 7: the model's first fully connected layer (paper name, module path), if the model is known."""
    from pruning_cli.models import get_model_spec

    try:
        spec = get_model_spec(model)
    except KeyError:
        return None
    kinds = spec.layer_kinds()
    name = next((name for name, kind in kinds.items() if kind == "fc"), next(iter(kinds)))
    return name, spec.layers[name]


def _weights(path: Path, key: str) -> Any:
    from pruning_cli.errors import UserError
    from pruning_cli.records.files import load_model_state

    try:
        state = load_model_state(path)
    except UserError:
        return None
    tensor = state.get(key) if isinstance(state, dict) else None
    return None if tensor is None else tensor.detach().float().flatten().numpy()


def plot_histogram(runs: pd.DataFrame, model: str, path: Path) -> str | None:
    """Fig. 7: one fc layer's weights before pruning (dense.pt) and after pruning + retraining (model.pt, non-zero).

    Drawn from the first run of the model whose two files hold that layer.
    """
    data = runs[runs.model == model]
    if data.empty:
        return "no finished pruning run"
    layer = histogram_layer(model)
    if layer is None:
        return f"model {model} is not in pruning_cli.models, so its layers are unknown"
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    name, module = layer
    for run in data.itertuples():
        before = _weights(Path(run.dir) / DENSE_CHECKPOINT, f"{module}.weight")
        after = _weights(Path(run.dir) / MODEL_FILE, f"{module}.weight")
        if before is not None and after is not None:
            break
    else:
        return f"no run has {module}.weight in both checkpoints/dense.pt and model.pt"
    after = after[after != 0]
    limit = float(max(abs(before).max(), abs(after).max() if after.size else 0.0)) or 1.0
    bins = [limit * (2 * index / 100 - 1) for index in range(101)]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    left.hist(before, bins=bins, color="tab:blue")
    left.set_title(f"{name} before pruning ({before.size:,} weights)")
    right.hist(after, bins=bins, color="tab:orange")
    right.set_title(f"{name} after pruning + retraining ({after.size:,} non-zero)")
    for axes in (left, right):
        axes.set_xlabel("weight value")
        axes.set_ylabel("count")
        axes.grid(alpha=0.3)
    figure.suptitle(f"{network_name(model)}, run {run.run}")
    _save(figure, path)
    return None


def plot_iterations(metrics: pd.DataFrame, model: str, path: Path) -> str | None:
    """Top-1 and compression per iteration: after each prune (x) and after its retraining (line), per run."""
    data = metrics[metrics.model == model]
    if data.empty:
        return "no finished pruning run"
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    figure, (accuracy, compression) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for run, part in data.groupby("run", sort=False):
        ends = part.groupby("iteration", sort=True).tail(1)  # the model each iteration ends with
        line = accuracy.plot(ends.iteration, 100 * ends.top1, marker="o", label=run)[0]
        pruned = part[(part.phase == "prune") & part.iteration.isin(ends[ends.phase == "retrain"].iteration)]
        accuracy.scatter(pruned.iteration, 100 * pruned.top1, marker="x", color=line.get_color())
        compression.plot(ends.iteration, ends.params_total / ends.params_nonzero, marker="o", color=line.get_color())
    accuracy.set_ylabel("top-1 accuracy (%)\n(x: after pruning, before retraining)")
    compression.set_ylabel("compression (x)")
    compression.set_xlabel("iteration (0 = dense)")
    accuracy.set_title(f"Prune -> retrain iterations: {_title(model, data.dataset)}")
    for axes in (accuracy, compression):
        axes.grid(alpha=0.3)
    compression.xaxis.get_major_locator().set_params(integer=True)
    _legend(accuracy)
    _save(figure, path)
    return None


def _legend(axes: Any) -> None:
    if 0 < len(axes.get_legend_handles_labels()[1]) <= MAX_LEGEND:
        axes.legend(fontsize="small")


def draw_all(
    runs: pd.DataFrame, metrics: pd.DataFrame, sensitivity: pd.DataFrame, out_dir: Path
) -> dict[Path, str | None]:
    """Every figure for every model present; returns {file: None if written, else the reason it is absent}."""
    results: dict[Path, str | None] = {}
    for model in pd.unique(pd.concat([runs.model, sensitivity.model], ignore_index=True)):
        plots = [("sensitivity", plot_sensitivity, sensitivity)] if model in set(sensitivity.model) else []
        if model in set(runs.model):
            frontier = partial(plot_frontier, searches=search_curves(runs, metrics))
            plots += [("tradeoff", plot_tradeoff, runs), ("frontier", frontier, runs)]
            plots += [("methods", plot_methods, method_curves(runs))]
            plots += [("histogram", plot_histogram, runs)]
            plots += [("iterations", plot_iterations, metrics)]
        for kind, plot, frame in plots:
            target = out_dir / f"{kind}_{model}.png"
            results[target] = plot(frame, str(model), target)
    return results
