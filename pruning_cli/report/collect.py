"""Find run directories and read their CSVs into tidy pandas frames; set aside broken runs with a reason.

Every later step (tables, plots) works from these frames only, so a run that is unfinished or has a damaged CSV
is caught once, here, and listed as skipped instead of crashing a plot or skewing a mean.
"""

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pruning_cli.config.schema import RunConfig
from pruning_cli.errors import UserError
from pruning_cli.models.registry import model_key
from pruning_cli.policies import POLICIES
from pruning_cli.records.contract import (
    LAYERS,
    METRICS,
    MODEL_FILE,
    PHASES,
    RUN_RECORD,
    SENSITIVITY,
    CsvSchema,
    config_tree,
    excluded_layers,
    experiment_settings,
    flatten,
    read_run_record,
)
from pruning_cli.records.files import load_model_state
from pruning_cli.sparse.export import export_state_dict, file_sizes, is_quantized

TEXT_COLUMNS = ("phase", "layer", "verdict")
RUN_COLUMNS = (
    "run",
    "dir",
    "model",
    "dataset",
    "seed",
    "method",
    "setting",
    "regularization",
    "schedule",
    "retrain",
    "iterations",
    "dense_top1",
    "dense_top5",
    "final_top1",
    "final_top5",
    "error_change_top1",
    "error_change_top5",
    "dense_val_top1",
    "final_val_top1",
    "dense_confirm_top1",
    "final_confirm_top1",
    "quantized_top1",
    "quantized_change_top1",
    "params_total",
    "params_nonzero",
    "compression",
    "dense_bytes",
    "csr_bytes",
    "compact_bytes",
    "quantized_bytes",
    "deep_bytes",
    "seconds",
)
# Bytes of model.pt per layer: dense float32, CSR and the paper's compact format as prune-export sizes them, and for a
# quantized model (quantize=kmeans) its quantized and quantized + Huffman files (empty otherwise).
STORAGE_COLUMNS = ("layer", "dense_bytes", "csr_bytes", "compact_bytes", "quantized_bytes", "deep_bytes")
ID_COLUMNS = ("run", "model", "dataset", "seed", "method", "setting")


@dataclass(frozen=True)
class Skipped:
    """A run directory (or one of its files) left out of the report, and why."""

    path: Path
    reason: str


@dataclass
class Collection:
    """Everything the report is built from: one tidy frame per kind of CSV, plus what was left out."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    layers: pd.DataFrame
    sensitivity: pd.DataFrame
    storage: pd.DataFrame  # bytes per layer of each run's model.pt, plus its "biases+other" and "total" rows
    skipped: list[Skipped] = field(default_factory=list)


class _Unusable(Exception):
    """A file of a run cannot be used; the message is the reason shown in the skipped list."""


def _natural_key(path: Path) -> list[Any]:
    # Hydra's multirun jobs are 0, 1, ..., 10: sort them as numbers, not as strings.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def find_run_dirs(paths: Sequence[Path]) -> tuple[list[tuple[str, Path]], list[Skipped]]:
    """Run directories (those holding `run.json`) at or below each path, each with a short unique id.

    The id is the input's name plus the path below it (`sweep/3`), so runs from several sweeps stay apart.
    A multirun job folder without a config, or an input with no run at all, is reported as skipped.
    """
    found: list[tuple[str, Path]] = []
    skipped: list[Skipped] = []
    seen: set[Path] = set()
    for root in paths:
        if not root.exists():
            raise UserError(f"{root} does not exist; give run directories or Hydra multirun directories")
        if not root.is_dir():
            raise UserError(f"{root} is not a directory; give run directories or Hydra multirun directories")
        walked = list(_walk(root, skipped))
        if not walked:
            skipped.append(Skipped(root, f"no run directory found (no {RUN_RECORD} at or below it)"))
        runs = [run for run in walked if run.resolve() not in seen]
        seen.update(run.resolve() for run in runs)  # a sweep given along with one of its jobs counts once
        name = root.resolve().name or str(root)
        found += [(name if run == root else f"{name}/{run.relative_to(root).as_posix()}", run) for run in runs]
    counts: dict[str, int] = {}
    unique = []
    for run_id, run in found:
        counts[run_id] = counts.get(run_id, 0) + 1
        unique.append((run_id if counts[run_id] == 1 else f"{run_id}#{counts[run_id]}", run))
    return unique, list(dict.fromkeys(skipped))


def _walk(directory: Path, skipped: list[Skipped]) -> Iterable[Path]:
    if (directory / RUN_RECORD).is_file():
        yield directory  # a run: its subfolders (checkpoints) hold no further runs
        return
    try:
        children = sorted((entry for entry in directory.iterdir() if entry.is_dir()), key=_natural_key)
    except OSError as error:
        skipped.append(Skipped(directory, f"cannot list it: {error.strerror or error}"))
        return
    is_sweep = (directory / "multirun.yaml").is_file()
    for child in children:
        if child.name.startswith(".") or child.is_symlink():
            continue
        if is_sweep and child.name.isdigit() and not (child / RUN_RECORD).is_file():
            skipped.append(Skipped(child, f"multirun job without {RUN_RECORD} (did the job start?)"))
            continue
        yield from _walk(child, skipped)


def _select(config: dict[str, Any], key: str) -> Any:
    """`config["a"]["b"]` for key `a.b`, or None where the run's config has no such key."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def method_label(config: dict[str, Any], metrics: pd.DataFrame | None = None) -> dict[str, Any]:
    """The run's method as the paper's Fig. 5 names it: regularization, schedule, with or without retraining.

    Without retraining the pruned weights come straight from dense training, so the training's regularization is
    the one that matters; with retraining, the retraining's (written `L1/L2` when training used L1, retraining L2).
    """
    name = "sensitivity" if _select(config, "task.name") == "sensitivity" else _select(config, "pruning.name")
    iterations = _select(config, "pruning.iterations")
    epochs = _select(config, "retrain.epochs")
    if isinstance(epochs, int | float):
        retrain = epochs > 0
    elif metrics is not None and "epochs" in metrics:
        retrain = bool(((metrics.phase == "retrain") & (metrics.epochs.fillna(0) > 0)).any())
    else:
        retrain = True
    policy = POLICIES.get(name)
    if name == "sensitivity" or policy is None:
        schedule = "?" if name is None else str(name)
    else:  # each policy names its own runs (the paper's rule as Fig. 5 does)
        schedule = policy.label(_select(config, "pruning") or {})
    train_reg = str(_select(config, "train.regularization") or "?").upper()
    retrain_reg = str(_select(config, "retrain.regularization") or "?").upper()
    if not retrain or schedule == "sensitivity":
        regularization = train_reg
    else:
        regularization = retrain_reg if train_reg in (retrain_reg, "?") else f"{train_reg}/{retrain_reg}"
    if schedule == "sensitivity":
        method = f"{regularization}, sensitivity analysis"
    else:
        method = f"{regularization}, {schedule}, {'retrain' if retrain else 'no retrain'}"
        method += ", distilled" if (_select(config, "retrain.distill.weight") or 0) > 0 else ""
    return {
        "method": method,
        "regularization": regularization,
        "schedule": schedule,
        "retrain": retrain,
        "iterations": iterations,
    }


def flat_config(config: dict[str, Any]) -> dict[str, str]:
    """The experiment's settings (records.experiment_settings, without the repeat keys) as `dotted.key -> text`.

    A key an older run's config lacks (added to the schema since) counts as its default, not as a difference.
    """
    defaults = config_tree(RunConfig())
    policy = POLICIES.get(_select(config, "pruning.name"))
    if policy is not None:  # the pruning keys' defaults are those of the run's own policy
        defaults["pruning"] = config_tree(policy.settings())
    flat = {**flatten(defaults), **flatten(config)}
    return {key: _text(value) for key, value in experiment_settings(flat, repeats=False).items()}


def _text(value: Any) -> str:
    """A setting as text; a mapping (`pruning.kept`) in sorted key order, so that the order it was written in
    does not tell two experiments apart."""
    if value is None:
        return "null"
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)


def settings(configs: dict[str, dict[str, str]], groups: dict[str, tuple[Any, ...]]) -> dict[str, str]:
    """Per run, the config keys that set its experiment apart from others with the same model, dataset, method.

    Without this, a tuning sweep (say 5 vs 8 iterations) would be averaged as if its runs were seeds of one
    experiment. Runs whose group holds a single configuration get an empty setting.
    """
    members: dict[tuple[Any, ...], list[str]] = {}
    for run, group in groups.items():
        members.setdefault(group, []).append(run)
    result: dict[str, str] = {}
    for runs in members.values():
        keys = sorted(set().union(*(configs[run] for run in runs)))
        varying = [key for key in keys if len({configs[run].get(key, "(unset)") for run in runs}) > 1]
        for run in runs:
            result[run] = ", ".join(f"{key}={configs[run].get(key, '(unset)')}" for key in varying)
    return result


def read_csv_checked(path: Path, schema: CsvSchema) -> pd.DataFrame:
    """A run CSV with numeric columns as numbers, or `_Unusable` saying what is wrong with it.

    prune-run writes whole lines and flushes each, so a last line without its newline, or a row with an
    empty required field, means the file was cut (a killed run, a partial copy) rather than a real value.
    """
    if not path.is_file():
        raise _Unusable(f"no {path.name}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise _Unusable(f"{path.name} cannot be read ({type(error).__name__})") from error
    if not text.strip():
        raise _Unusable(f"{path.name} is empty")
    if not text.endswith("\n"):
        raise _Unusable(f"{path.name} ends mid-row (truncated file?)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # text as written: a layer may be "None"
    except (OSError, ValueError) as error:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise _Unusable(f"{path.name} cannot be parsed ({str(error).splitlines()[0]})") from error
    required, optional = schema.required, schema.optional
    missing = [column for column in required if column not in frame]
    if missing:
        raise _Unusable(f"{path.name} lacks column(s) {', '.join(missing)}")
    if frame.empty:
        raise _Unusable(f"{path.name} has a header but no rows (unfinished run?)")
    for column in (*required, *optional):
        if column not in frame:
            frame[column] = float("nan")
        elif column in TEXT_COLUMNS:
            frame[column] = frame[column].str.strip().replace("", None).astype(object)
        else:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    incomplete = frame[list(required)].isna().any(axis=1)
    if incomplete.any():
        line = int(incomplete.to_numpy().nonzero()[0][0]) + 2  # +1 for the header, +1 to count from 1
        raise _Unusable(f"{path.name} line {line} is incomplete (truncated file?)")
    return frame[[*required, *optional]]


def _read_metrics(run_dir: Path, iterations: Any) -> pd.DataFrame:
    metrics = read_csv_checked(run_dir / METRICS.file, METRICS)
    unknown = sorted(set(metrics.phase) - set(PHASES))
    if unknown:
        raise _Unusable(f"metrics.csv has unknown phase(s) {', '.join(unknown)}")
    for column in ("iteration", "params_total", "params_nonzero"):
        metrics[column] = metrics[column].astype("int64")
    problems = []
    if not ((metrics.iteration == 0) & (metrics.phase == "train")).any():
        problems.append("metrics.csv has no dense row (iteration 0, train)")
    elif len(metrics) < 2:
        problems.append("metrics.csv has only the dense row")
    elif isinstance(iterations, int) and metrics.iteration.iloc[-1] < iterations:
        problems.append(f"metrics.csv stops at iteration {metrics.iteration.iloc[-1]} of {iterations}")
    if not (run_dir / MODEL_FILE).is_file():
        problems.append(f"no {MODEL_FILE}")
    if problems:
        raise _Unusable("; ".join(problems) + " (unfinished run?)")
    return metrics


def _read_sensitivity(run_dir: Path) -> pd.DataFrame:
    """sensitivity.csv plus `pruned` (fraction of the layer's weights removed, the x axis of the paper's Fig. 6).

    The unpruned baseline row (layer `none`) may leave `kept` empty: it keeps everything.
    """
    table = read_csv_checked(run_dir / SENSITIVITY.file, SENSITIVITY)
    table["layer"] = table.layer.where(table.layer.str.lower() != "none", "none")
    table.loc[table.layer == "none", "kept"] = table.loc[table.layer == "none", "kept"].fillna(1.0)
    if table.kept.isna().any():
        line = int(table.kept.isna().to_numpy().nonzero()[0][0]) + 2
        raise _Unusable(f"sensitivity.csv line {line} has no kept fraction")
    return table.assign(pruned=1 - table.kept)


def _read_storage(run_dir: Path, model: str) -> pd.DataFrame:
    """The bytes of the run's model.pt per layer as `prune-export` reports them (dead units removed): dense
    float32, CSR and the paper's compact format, and the sizes of the quantized files `prune-export` writes for a
    quantized model; one row per prunable layer, "biases+other" and "total"."""
    try:
        state = load_model_state(run_dir / MODEL_FILE)
        exported, report = export_state_dict(state, model, True, excluded_layers(run_dir))
        for encoding in ("quantized", "deep"):
            sizes = file_sizes(exported, model, encoding) if is_quantized(exported) is None else {}
            report[f"{encoding}_bytes"] = pd.array(report.layer.map(sizes), dtype="Int64")
    except (UserError, KeyError, ValueError, RuntimeError, TypeError, AttributeError) as error:  # foreign file
        raise _Unusable(f"model.pt cannot be sized ({type(error).__name__})") from error
    return report[list(STORAGE_COLUMNS)].astype({column: "Int64" for column in STORAGE_COLUMNS[1:]})


def _run_row(
    run_id: str, run_dir: Path, info: dict[str, Any], metrics: pd.DataFrame, storage: pd.DataFrame | None
) -> dict[str, Any]:
    dense = metrics[(metrics.iteration == 0) & (metrics.phase == "train")].iloc[0]
    final = metrics[metrics.phase != "quantize"].iloc[-1]  # the pruned model; quantization is reported beside it
    quantized = metrics[metrics.phase == "quantize"].top1
    quantized_top1 = quantized.iloc[-1] if len(quantized) else float("nan")
    return {
        "run": run_id,
        "dir": str(run_dir),
        **info,
        "dense_top1": dense.top1,
        "dense_top5": dense.top5,
        "final_top1": final.top1,
        "final_top5": final.top5,
        # pruned error - dense error, in percentage points (= accuracy lost): the paper's Table 1 comparison
        "error_change_top1": round(100 * (dense.top1 - final.top1), 9),  # 9 decimals: no float noise
        "error_change_top5": round(100 * (dense.top5 - final.top5), 9),
        # on the held-out validation split (runs with dataset.val_split): what a choice between runs may read
        "dense_val_top1": dense.val_top1,
        "final_val_top1": final.val_top1,
        # on the confirmation split (dataset.confirm_split), which no choice reads: does the choice hold?
        "dense_confirm_top1": dense.get("confirm_top1"),
        "final_confirm_top1": final.get("confirm_top1"),
        # trained quantization (quantize=kmeans) of the pruned model: its top-1, and the points it lost
        "quantized_top1": quantized_top1,
        "quantized_change_top1": round(100 * (final.top1 - quantized_top1), 9),
        "params_total": int(final.params_total),
        "params_nonzero": int(final.params_nonzero),
        "compression": final.params_total / final.params_nonzero,
        **(
            dict.fromkeys(STORAGE_COLUMNS[1:], None)
            if storage is None
            else storage.set_index("layer").loc["total"].to_dict()
        ),
        "seconds": metrics.seconds.sum(min_count=1),
    }


def _with_ids(frame: pd.DataFrame, ids: dict[str, Any]) -> pd.DataFrame:
    return frame.assign(**ids)[[*ID_COLUMNS, *frame.columns]]


@dataclass
class _Gathered:
    """The rows and frames read so far, per kind, and the runs' settings (to tell experiments apart)."""

    skipped: list[Skipped]
    runs: list[dict[str, Any]] = field(default_factory=list)
    frames: dict[str, list[pd.DataFrame]] = field(
        default_factory=lambda: {kind: [] for kind in ("metrics", "layers", "sensitivity", "storage")}
    )
    configs: dict[str, dict[str, str]] = field(default_factory=dict)
    groups: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def collection(self) -> Collection:
        columns = {
            "metrics": (*ID_COLUMNS, *METRICS.required, *METRICS.optional),
            "layers": (*ID_COLUMNS, *LAYERS.required, *LAYERS.optional),
            "sensitivity": (*ID_COLUMNS, *SENSITIVITY.required, *SENSITIVITY.optional, "pruned"),
            "storage": (*ID_COLUMNS, *STORAGE_COLUMNS),
        }
        frames = {"runs": pd.DataFrame(self.runs, columns=list(RUN_COLUMNS))}
        frames |= {kind: _concat(self.frames[kind], columns[kind]) for kind in columns}
        used = set(frames["runs"].run) | set(frames["sensitivity"].run)  # skipped runs must not split the others
        setting = settings({run: self.configs[run] for run in used}, {run: self.groups[run] for run in used})
        for frame in frames.values():
            frame["setting"] = frame.run.map(setting).astype(object)
        return Collection(**frames, skipped=self.skipped)


def collect(paths: Sequence[Path]) -> Collection:
    """Read every run below `paths` into frames: runs, metrics, layers, sensitivity (see RUN_COLUMNS)."""
    found, skipped = find_run_dirs(paths)
    gathered = _Gathered(skipped)
    for run_id, run_dir in found:
        _collect_run(gathered, run_id, run_dir)
    return gathered.collection()


def _collect_run(gathered: _Gathered, run_id: str, run_dir: Path) -> None:
    """Read one run's record and CSVs into `gathered`, or say in its skipped list why they are left out."""
    try:
        config = read_run_record(run_dir)["config"]
    except ValueError as problem:
        gathered.skipped.append(Skipped(run_dir, str(problem)))
        return
    model, dataset, seed = (_select(config, key) for key in ("model.name", "dataset.name", "seed"))
    model = model_key(model, _select(config, "model.arch"), _select(config, "model._target_")) if model else model
    if not isinstance(model, str):
        gathered.skipped.append(Skipped(run_dir, f"{RUN_RECORD} has no model.name"))
        return
    label = method_label(config)
    gathered.configs[run_id] = flat_config(config)
    gathered.groups[run_id] = (model, dataset, label["method"])
    ids = {"run": run_id, "model": model, "dataset": dataset, "seed": seed, "method": label["method"], "setting": ""}
    problems = []
    if (run_dir / SENSITIVITY.file).is_file() or label["schedule"] == "sensitivity":
        try:
            gathered.frames["sensitivity"].append(_with_ids(_read_sensitivity(run_dir), ids))
        except _Unusable as problem:
            problems.append(str(problem))
    # A sensitivity analysis prunes no model for good: its metrics.csv (if any) is not a pruning result.
    if label["schedule"] != "sensitivity" and (
        (run_dir / METRICS.file).is_file() or not (run_dir / SENSITIVITY.file).is_file()
    ):
        problems.append(_collect_pruning(gathered, run_dir, config, ids))
    problems = [problem for problem in problems if problem]
    if problems:
        gathered.skipped.append(Skipped(run_dir, "; ".join(problems)))


def _collect_pruning(gathered: _Gathered, run_dir: Path, config: dict[str, Any], ids: dict[str, Any]) -> str | None:
    """Read a pruning run's metrics, storage and layers into `gathered`; the reason it is unusable, if it is."""
    try:
        # A policy that runs all its iterations says so; others may stop sooner (a walk) or have none.
        policy = POLICIES.get(_select(config, "pruning.name"))
        every = policy is not None and policy.runs_every_iteration
        iterations = _select(config, "pruning.iterations") if every else None
        metrics = _read_metrics(run_dir, iterations)
    except _Unusable as problem:
        return str(problem)
    label = method_label(config, metrics)
    ids["method"] = label["method"]
    gathered.groups[ids["run"]] = (ids["model"], ids["dataset"], label["method"])
    try:
        storage = _read_storage(run_dir, ids["model"])
        gathered.frames["storage"].append(_with_ids(storage, ids))
    except _Unusable as problem:
        storage = None
        gathered.skipped.append(Skipped(run_dir, f"{problem}: storage left out (the run is kept)"))
    gathered.runs.append(_run_row(ids["run"], run_dir, {**ids, **label}, metrics, storage))
    gathered.frames["metrics"].append(_with_ids(metrics, ids))
    try:
        gathered.frames["layers"].append(_with_ids(read_csv_checked(run_dir / LAYERS.file, LAYERS), ids))
    except _Unusable as problem:
        gathered.skipped.append(Skipped(run_dir, f"{problem}: per-layer rows left out (the run is kept)"))
    return None


def _concat(frames: list[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(frames, ignore_index=True)
