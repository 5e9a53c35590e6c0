"""What a tracker logs of a CSV row: its numbers, named `<file>/<column>` (`metrics/top1`, `epochs/train_loss`), and
each layer's kept fraction as `layers/kept/<layer>`; text columns and empty values (NaN) are left out."""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pruning_cli.records.contract import LAYERS, METRICS

LAYER_COLUMNS = ("kept",)  # of layers.csv, one scalar per layer each
FINAL = "final"  # the prefix of a finished run's figures (metrics.csv's last row)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def scalars(file: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The scalars of rows of the CSV `file`, by tag."""
    if file == LAYERS.file:
        return {
            f"{Path(file).stem}/{column}/{row['layer']}": float(row[column])
            for row in rows
            for column in LAYER_COLUMNS
            if is_number(row.get(column))
        }
    return {f"{Path(file).stem}/{key}": float(value) for row in rows for key, value in row.items() if is_number(value)}


def final_scalars(final: Mapping[str, float]) -> dict[str, float]:
    """A finished run's figures as `final/<column>`: what a sweep compares its runs by."""
    return {f"{FINAL}/{key}": value for key, value in final.items() if is_number(value)}


def final_tags() -> list[str]:
    """Every tag `final_scalars` may give, known before the run ends (TensorBoard's HParams tab declares them)."""
    return [f"{FINAL}/{column}" for column in METRICS.columns]


def hyperparameter(value: Any) -> int | float | str | bool:
    """A config value as a tracker's hyperparameter: numbers, text and booleans as they are, the rest as text."""
    return value if isinstance(value, int | float | str | bool) else str(value)
