"""Table 1 and the per-layer tables (paper Tables 2-5), measured beside the paper's figures, as frames and markdown.

The paper's figures come from `pruning_cli.paper`, so a reader of table1.md sees exactly what a run was held
against.
"""

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pruning_cli.paper import (
    DEEP_COMPRESSION,
    NETWORKS,
    PAPER_FLOPS_CUT,
    PAPER_KEPT,
    PAPER_KEPT_TOTAL,
    PAPER_TABLE1,
    PaperRow,
    network_name,
)

GROUP = ["model", "dataset", "method", "setting"]
EPSILON = 1e-9  # float noise when a change equals the paper's exactly (tolerance 0)


MODEL_ORDER = list(NETWORKS)
CSV_FLOAT = "%.10g"  # full precision of the logged numbers without float noise


# ---------------------------------------------------------------------------------------------------- formatting


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of already formatted cells (pandas' to_markdown would need `tabulate`)."""
    columns = [str(column) for column in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def _missing(value: float | None) -> bool:
    """None, NaN or pandas' NA (nullable integer columns: a run without a quantized file)."""
    return value is None or bool(pd.isna(value))


def fmt_count(value: float) -> str:
    """A parameter or FLOP count the way the paper writes it: 267K, 6.7M, 1.5G."""
    if _missing(value):
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}".removesuffix(".0") + unit
    return f"{value:.0f}"


def fmt_bytes(value: float) -> str:
    """A size in bytes with SI units (1 MB = 10^6 bytes)."""
    if _missing(value):
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def fmt_storage(dense: float, csr: float, compact: float) -> str:
    """'1.07 MB -> 129 KB / 106 KB (10.1x)': dense -> CSR / compact bytes, and dense / compact."""
    if _missing(dense) or _missing(compact):
        return "n/a"
    return f"{fmt_bytes(dense)} -> {fmt_bytes(csr)} / {fmt_bytes(compact)} ({dense / compact:.1f}x)"


def fmt_pct(value: float, digits: int = 2) -> str:
    return "n/a" if _missing(value) else f"{value:.{digits}f}%"


def fmt_points(value: float, spread: float = math.nan) -> str:
    """A signed change in percentage points, with ± the std over seeds when there are several."""
    if _missing(value):
        return "n/a"
    value = round(value, 2) + 0.0  # no "-0.00" for float noise around zero
    return f"{value:+.2f}" + ("" if _missing(spread) else f" ± {spread:.2f}")


def _pair(top1: str, top5: str | None) -> str:
    return top1 if top5 is None else f"{top1} / {top5}"


def _both(top1: float, top5: float, show_top5: bool, formatter: Callable[[float], str] = fmt_pct) -> str:
    return _pair(formatter(top1), formatter(top5) if show_top5 else None)


# ---------------------------------------------------------------------------------------------------- methods


def method_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """The points of each method's accuracy-against-compression curve: per (model, dataset, method, setting), the
    compression and the top-1 lost against each run's own dense model (points), mean and std over seeds."""
    table = _seed_means(runs)[[*GROUP, "n", "compression", "error_change_top1", "error_change_top1_std"]]
    table.insert(0, "network", table.model.map(network_name))
    return table.sort_values(["model", "dataset", "method", "compression"], kind="stable").reset_index(drop=True)


def search_curves(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """The walk steps each budgeted walk (pruning=auto) retrained, in the order tested: compression against the
    validation top-1 each lost to its run's dense model, in points (the curve the walk measured). A run's tested
    models are the retrainings with a verdict (records.METRICS), whatever policy gave it."""
    verdicts = metrics.verdict if "verdict" in metrics else pd.Series(index=metrics.index, dtype=object)
    tested = metrics.run[(metrics.phase == "retrain") & verdicts.notna()].unique()
    searched = metrics[metrics.run.isin(tested) & metrics.run.isin(runs.run)]
    dense = searched[searched.phase == "train"].set_index("run").val_top1
    tried = searched[searched.phase == "retrain"]
    lost = 100 * (tried.run.map(dense) - tried.val_top1)
    return tried.assign(val_lost=lost)[["run", "model", "method", "compression", "val_lost"]].reset_index(drop=True)


def methods_markdown(model: str, table: pd.DataFrame) -> str:
    """methods_<model>.md: every method at every compression it was run at, side by side."""
    rows = table[table.model == model]
    cells = pd.DataFrame(
        {
            "data set": rows.dataset,
            "method": rows.method,
            "seeds": rows.n,
            "compression": [f"{value:.1f}x" for value in rows.compression],
            "top-1 lost (points, mean ± std)": list(
                map(fmt_points, rows.error_change_top1, rows.error_change_top1_std)
            ),
        }
    )
    note = (
        "Compression: all parameters (biases included) before / after, mean over seeds. Top-1 lost: test error of "
        "the pruned model minus that of the run's own dense model, in points (negative: it gained)."
    )
    return f"# {network_name(model)}: pruning methods side by side\n\n{note}\n\n{markdown_table(cells)}\n"


# ---------------------------------------------------------------------------------------------------- Table 1


def table1(runs: pd.DataFrame, tolerance: float = 0.0) -> pd.DataFrame:
    """Table 1 per (model, dataset, method): means over seeds beside the paper's row, and whether it is matched.

    Errors are in %, changes (pruned - dense error) in percentage points. `meets_paper`: compression at least the
    paper's and the top-1 change (and top-5 where the paper has it) at most the paper's change + `tolerance`.
    """
    table = _seed_means(runs)
    table["storage_ratio"] = table.dense_bytes / table.compact_bytes
    table.insert(0, "network", table.model.map(network_name))
    table = _beside_paper(table)
    table["meets_paper"] = [_meets(row, tolerance) for row in table.itertuples()]
    return _in_model_order(table)


def _seed_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Errors in % and the other measures averaged over seeds, so each (model, dataset, method, setting) is one row."""
    frame = runs.assign(
        dense_top1_err=100 * (1 - runs.dense_top1),
        pruned_top1_err=100 * (1 - runs.final_top1),
        dense_top5_err=100 * (1 - runs.dense_top5),
        pruned_top5_err=100 * (1 - runs.final_top5),
    )
    return (
        frame.groupby(GROUP, sort=False, dropna=False)
        .agg(
            n=("run", "size"),
            dense_top1_err=("dense_top1_err", "mean"),
            pruned_top1_err=("pruned_top1_err", "mean"),
            error_change_top1=("error_change_top1", "mean"),
            error_change_top1_std=("error_change_top1", "std"),
            dense_top5_err=("dense_top5_err", "mean"),
            pruned_top5_err=("pruned_top5_err", "mean"),
            error_change_top5=("error_change_top5", "mean"),
            params_before=("params_total", "mean"),
            params_after=("params_nonzero", "mean"),
            compression=("compression", "mean"),
            dense_bytes=("dense_bytes", "mean"),
            csr_bytes=("csr_bytes", "mean"),
            compact_bytes=("compact_bytes", "mean"),
            quantized_change_top1=("quantized_change_top1", "mean"),
            deep_bytes=("deep_bytes", "mean"),
        )
        .reset_index()
    )


def _beside_paper(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 figures beside each measured row, so `meets_paper` and the differences can be read off."""
    paper = pd.DataFrame(
        [_paper_columns(PAPER_TABLE1.get(model)) for model in table.model],
        index=table.index,
    )
    # 9 decimals: accuracies are logged to 4, so this only strips float noise (1.6399999999999997%)
    table = pd.concat([table, paper], axis=1).round(9)
    table["error_change_vs_paper"] = table.error_change_top1 - table.paper_error_change_top1
    table["error_change_top5_vs_paper"] = table.error_change_top5 - table.paper_error_change_top5
    table[["error_change_vs_paper", "error_change_top5_vs_paper"]] = table[
        ["error_change_vs_paper", "error_change_top5_vs_paper"]
    ].round(9)
    table["compression_vs_paper"] = table.compression / table.paper_compression
    return table


def _in_model_order(table: pd.DataFrame) -> pd.DataFrame:
    """The rows in the paper's network order (unknown models last), then by dataset and method, so runs compare."""
    order = {model: index for index, model in enumerate(MODEL_ORDER)}
    table["_order"] = table.model.map(lambda model: order.get(model, len(order)))
    return (
        table.sort_values(["_order", "dataset", "method"], kind="stable").drop(columns="_order").reset_index(drop=True)
    )


def _paper_columns(paper: PaperRow | None) -> dict[str, float | str | None]:
    if paper is None:
        return {
            "paper_dataset": None,
            **dict.fromkeys(
                ("paper_dense_top1_err", "paper_pruned_top1_err", "paper_error_change_top1", "paper_dense_top5_err")
                + ("paper_pruned_top5_err", "paper_error_change_top5", "paper_params_before", "paper_params_after")
                + ("paper_compression",),
                math.nan,
            ),
        }
    return {
        "paper_dataset": paper.dataset,
        "paper_dense_top1_err": paper.dense_top1,
        "paper_pruned_top1_err": paper.pruned_top1,
        "paper_error_change_top1": round(paper.pruned_top1 - paper.dense_top1, 2),
        "paper_dense_top5_err": paper.dense_top5,
        "paper_pruned_top5_err": paper.pruned_top5,
        "paper_error_change_top5": round(paper.pruned_top5 - paper.dense_top5, 2),
        "paper_params_before": paper.params_before,
        "paper_params_after": paper.params_after,
        "paper_compression": float(paper.compression),
    }


def _meets(row: object, tolerance: float) -> bool | None:
    if _missing(row.paper_compression):
        return None
    checks = [
        row.compression >= row.paper_compression - EPSILON,
        row.error_change_top1 <= row.paper_error_change_top1 + tolerance + EPSILON,
    ]
    if not _missing(row.paper_error_change_top5) and not _missing(row.error_change_top5):
        checks.append(row.error_change_top5 <= row.paper_error_change_top5 + tolerance + EPSILON)
    return all(checks)


def table1_markdown(table: pd.DataFrame, tolerance: float = 0.0) -> str:
    """table1.md: the measured rows, the paper's, their difference, and a note on what is compared."""
    rows = [_table1_cells(row) for row in table.itertuples()]
    note = _table1_note(tolerance)
    shown = pd.DataFrame(rows)
    if rows and not shown.setting.astype(bool).any():
        shown = shown.drop(columns="setting")  # only shown when runs of one method differ in other settings
    elif rows:
        note += " *setting*: the config keys in which runs of the same network, dataset and method differ."
    body = markdown_table(shown) if rows else "(no finished pruning run)"
    return f"# Table 1: pruning without loss of accuracy\n\n{note}\n\n{body}\n"


def _table1_cells(row: object) -> dict[str, object]:
    """One table1.md row as formatted cells, so the measured and the paper's figures read side by side."""
    top5 = not _missing(row.paper_dense_top5_err)  # the paper gives top-5 for the ImageNet networks only
    has_paper = row.paper_dataset is not None
    return {
        "network": row.network,
        "dataset": row.dataset,
        "method": row.method,
        "setting": row.setting,
        "n": row.n,
        "dense error": _both(row.dense_top1_err, row.dense_top5_err, top5),
        "pruned error": _both(row.pruned_top1_err, row.pruned_top5_err, top5),
        "change (pts)": _pair(
            fmt_points(row.error_change_top1, row.error_change_top1_std),
            fmt_points(row.error_change_top5) if top5 else None,
        ),
        "paper error": (
            f"{row.paper_dataset}: {_both(row.paper_dense_top1_err, row.paper_dense_top5_err, top5)} -> "
            f"{_both(row.paper_pruned_top1_err, row.paper_pruned_top5_err, top5)}"
            if has_paper
            else "n/a"
        ),
        "paper change": _both(row.paper_error_change_top1, row.paper_error_change_top5, top5, fmt_points),
        "change - paper": _both(row.error_change_vs_paper, row.error_change_top5_vs_paper, top5, fmt_points),
        "parameters": f"{fmt_count(row.params_before)} -> {fmt_count(row.params_after)}",
        "paper parameters": (
            f"{fmt_count(row.paper_params_before)} -> {fmt_count(row.paper_params_after)}" if has_paper else "n/a"
        ),
        "compression": f"{row.compression:.1f}x",
        "paper compression": f"{row.paper_compression:.0f}x" if has_paper else "n/a",
        "storage (dense -> CSR / compact)": fmt_storage(row.dense_bytes, row.csr_bytes, row.compact_bytes),
        "meets paper": {True: "yes", False: "no", None: "n/a"}[row.meets_paper],
        "quantized + Huffman (change)": fmt_deep(row.dense_bytes, row.deep_bytes, row.quantized_change_top1, row.model),
    }


def fmt_deep(dense: float, deep: float, change: float, model: str) -> str:
    """'25.2 KB (42.3x; Deep Compression 40x), +0.05': the quantized + Huffman file, and the change in top-1
    error of the quantized model against the pruned one (points; positive = accuracy lost)."""
    if _missing(deep):
        return "n/a"
    reference = f"; Deep Compression {DEEP_COMPRESSION[model]}x" if model in DEEP_COMPRESSION else ""
    return f"{fmt_bytes(deep)} ({dense / deep:.1f}x{reference}), {fmt_points(change)}"


def _table1_note(tolerance: float) -> str:
    """The note above table1.md, so a reader knows what each column measures and what is held against the paper."""
    return (
        "Errors are test errors (100% - accuracy; top-1, and top-1 / top-5 where the paper gives top-5), the mean "
        "over the n runs (seeds) of each network, dataset and method. *change* = pruned - dense error in percentage "
        "points (± std over seeds); *change - paper* compares it with the paper's change, positive = more accuracy "
        "lost than the paper. *meets paper*: compression >= the paper's Table 1 compression and change <= the "
        f"paper's change + {tolerance:.2f} points (top-1, and top-5 where the paper has it). The paper used MNIST "
        "(LeNets) and ImageNet (AlexNet, VGG-16): on another dataset the absolute errors are not comparable, "
        "the changes and the compression are. *storage*: the pruned model.pt's bytes as dense float32, as CSR "
        "and in the paper's compact format with dead units removed (what `prune-export` writes and prints), and "
        "dense / compact. *quantized + Huffman*: for runs with trained quantization (quantize=kmeans), the size of "
        "`prune-export --format deep`'s file, its ratio to dense float32 beside Deep Compression's (ICLR 2016, "
        "Table 1), and the change in top-1 error of the quantized model against the pruned one (points, positive = "
        "accuracy lost)."
    )


# ---------------------------------------------------------------------------------------------------- per layer


def final_layers(layers: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Each run's layer rows for its final model (the (iteration, phase) of its last metrics row).

    Adds `activations_nonzero`: the non-zero fraction of the layer's output after its nonlinearity, which is the
    next prunable layer's `inputs_nonzero` (the paper's "% non-zero activations"; the last layer's output: 100%).
    """
    last = metrics.groupby("run", sort=False).tail(1)[["run", "iteration", "phase"]]
    selected = layers.merge(last, on=["run", "iteration", "phase"], how="inner")
    missing = set(layers.run) - set(selected.run)
    if missing:  # layers.csv lacks the final phase's rows: take its last (iteration, phase) instead
        rest = layers[layers.run.isin(missing)]
        tail = rest.groupby("run", sort=False)[["iteration", "phase"]].last().reset_index()
        selected = pd.concat([selected, rest.merge(tail, on=["run", "iteration", "phase"])], ignore_index=True)
    nxt = selected.groupby("run", sort=False).inputs_nonzero.shift(-1)
    is_last = selected.groupby("run", sort=False).cumcount(ascending=False) == 0
    return selected.assign(activations_nonzero=nxt.where(~is_last, 1.0))


def layer_tables(
    layers: pd.DataFrame, metrics: pd.DataFrame, storage: pd.DataFrame | None = None
) -> dict[str, pd.DataFrame]:
    """Per model: one row per (dataset, method, layer) plus a total row, means over seeds, beside the paper.

    `storage` (collect's frame: bytes per run and layer) adds each layer's dense and compact bytes.
    """
    if layers.empty or metrics.empty:
        return {}
    final = _final_with_storage(layers, metrics, storage)
    table = _layer_means(pd.concat([final, _per_run_totals(final)], ignore_index=True))
    table = _beside_paper_layers(table)
    # keep each group's layers in forward order with its total last
    table["_group"] = table.groupby(GROUP, sort=False, dropna=False).ngroup()
    table["_total"] = table.layer == "total"
    table = table.sort_values(["_group", "_total"], kind="stable").drop(columns=["_group", "_total"])
    return {str(model): part.reset_index(drop=True) for model, part in table.groupby("model", sort=False)}


def _kept_fractions(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the kept fractions of weights and FLOPs, the same way for layers and for totals."""
    return frame.assign(
        weights_kept=frame.weights_nonzero / frame.weights_total,
        flops_kept=frame.flops_nonzero / frame.flops_total,
    )


def _final_with_storage(layers: pd.DataFrame, metrics: pd.DataFrame, storage: pd.DataFrame | None) -> pd.DataFrame:
    """Each run's final layer rows with bytes (NaN without `storage`) and kept fractions: what the tables average."""
    final = final_layers(layers, metrics)
    columns = ["run", "layer", "dense_bytes", "compact_bytes", "deep_bytes"]
    storage = pd.DataFrame(columns=columns) if storage is None else storage
    final = final.merge(storage[columns], on=["run", "layer"], how="left")
    return _kept_fractions(final)


def _per_run_totals(final: pd.DataFrame) -> pd.DataFrame:
    """Each run's "total" row, summed over its layers (NaN if any lacks FLOPs or bytes), to average like a layer."""
    totals = (
        final.groupby([*GROUP, "run"], sort=False)
        .agg(
            weights_total=("weights_total", "sum"),
            weights_nonzero=("weights_nonzero", "sum"),
            flops_total=("flops_total", lambda s: s.sum(min_count=len(s))),
            flops_nonzero=("flops_nonzero", lambda s: s.sum(min_count=len(s))),
            dense_bytes=("dense_bytes", lambda s: s.sum(min_count=len(s))),
            compact_bytes=("compact_bytes", lambda s: s.sum(min_count=len(s))),
            deep_bytes=("deep_bytes", lambda s: s.sum(min_count=len(s))),
        )
        .reset_index()
        .assign(layer="total", activations_nonzero=math.nan)
    )
    return _kept_fractions(totals)


def _layer_means(both: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per (model, dataset, method, setting, layer), fractions in %, as the paper's tables show."""
    table = (
        both.groupby([*GROUP, "layer"], sort=False, dropna=False)
        .agg(
            n=("run", "nunique"),
            weights=("weights_total", "mean"),
            flops=("flops_total", "mean"),
            activations_nonzero_pct=("activations_nonzero", "mean"),
            weights_kept_pct=("weights_kept", "mean"),
            flops_kept_pct=("flops_kept", "mean"),
            dense_bytes=("dense_bytes", "mean"),
            compact_bytes=("compact_bytes", "mean"),
            deep_bytes=("deep_bytes", "mean"),
        )
        .reset_index()
    )
    for column in ("activations_nonzero_pct", "weights_kept_pct", "flops_kept_pct"):
        table[column] *= 100
    return table


def _beside_paper_layers(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's % weights kept (Tables 2-5) and % FLOPs kept beside each layer row, to compare with the run."""
    table["paper_weights_kept_pct"] = [
        PAPER_KEPT_TOTAL.get(model, math.nan) if layer == "total" else PAPER_KEPT.get(model, {}).get(layer, math.nan)
        for model, layer in zip(table.model, table.layer, strict=True)
    ]
    table["weights_kept_vs_paper"] = table.weights_kept_pct - table.paper_weights_kept_pct
    table["paper_flops_kept_pct"] = [
        100 / PAPER_FLOPS_CUT[model] if layer == "total" and model in PAPER_FLOPS_CUT else math.nan
        for model, layer in zip(table.model, table.layer, strict=True)
    ]
    return table


def _fmt_sizes(dense: pd.Series, stored: pd.Series, with_dense: bool) -> list[str]:
    """'1.07 MB -> 106 KB (10.1x)' (or '106 KB (10.1x)' without the dense size) per row; n/a where not stored."""
    cells = []
    for dense_bytes, stored_bytes in zip(dense, stored, strict=True):
        if _missing(stored_bytes):
            cells.append("n/a")
            continue
        prefix = f"{fmt_bytes(dense_bytes)} -> " if with_dense else ""
        cells.append(f"{prefix}{fmt_bytes(stored_bytes)} ({dense_bytes / stored_bytes:.1f}x)")
    return cells


def layers_markdown(model: str, table: pd.DataFrame) -> str:
    """layers_<model>.md: one table per (dataset, method), like the paper's Tables 2-5."""
    cut = PAPER_FLOPS_CUT.get(model)
    note = (
        "The final (pruned and retrained) model, mean over the n runs. *weights* and *FLOPs* (per sample, a "
        "multiply-add counts 2) are the dense layer's; *% non-zero activations* is the non-zero fraction of the "
        "layer's output after its nonlinearity on the test set (the next layer's input; the last layer's output "
        "counts as 100%; n/a for runs logged before `inputs_nonzero` existed); *% FLOPs kept* = non-zero FLOPs / "
        "dense FLOPs as counted per layer. *paper* is the paper's % weights kept (Tables 2-5), *difference* = "
        "measured - paper in percentage points; *bytes*: the weights as dense float32 and in the paper's compact "
        "sparse format (dead units removed, as `prune-export` writes them; biases not included), and for runs with "
        "trained quantization (quantize=kmeans) in `prune-export --format deep`'s file"
        + (f"; the paper cut this network's FLOPs {cut}x ({100 / cut:.1f}% kept)." if cut else ".")
    )
    sections = [f"# Per-layer results: {network_name(model)}\n\n{note}\n"]
    for (dataset, method, setting), part in table.groupby(["dataset", "method", "setting"], sort=False, dropna=False):
        shown = pd.DataFrame(
            {
                "layer": part.layer,
                "weights": part.weights.map(fmt_count),
                "FLOPs": part.flops.map(fmt_count),
                "% non-zero activations": part.activations_nonzero_pct.map(lambda v: fmt_pct(v, 1)),
                "% weights kept": part.weights_kept_pct.map(lambda v: fmt_pct(v, 1)),
                "% FLOPs kept": part.flops_kept_pct.map(lambda v: fmt_pct(v, 1)),
                "paper % weights kept": part.paper_weights_kept_pct.map(lambda v: fmt_pct(v, 1)),
                "difference (pts)": part.weights_kept_vs_paper.map(fmt_points),
                "bytes dense -> compact": _fmt_sizes(part.dense_bytes, part.compact_bytes, with_dense=True),
                "bytes quantized + Huffman": _fmt_sizes(part.dense_bytes, part.deep_bytes, with_dense=False),
            }
        )
        shown.loc[part.layer == "total", "% non-zero activations"] = ""
        title = ", ".join(str(item) for item in (dataset, method, setting) if item)
        sections.append(f"## {title} (n={part.n.max()})\n\n{markdown_table(shown)}\n")
    return "\n".join(sections)


def write_table(frame: pd.DataFrame, markdown: str, stem: str, out_dir: Path) -> list[Path]:
    """Write `<stem>.csv` (full precision, for scripts) and `<stem>.md` (for reading) into out_dir."""
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    frame.to_csv(csv_path, index=False, float_format=CSV_FLOAT)
    md_path.write_text(markdown)
    return [csv_path, md_path]
