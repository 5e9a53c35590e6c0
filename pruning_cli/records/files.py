"""What a run writes: CSV logs row by row, checkpoints and the final model, each written atomically."""

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pruning_cli.errors import UserError


class CsvLog:
    """Appends rows to a CSV file and flushes each one, so a crash keeps every row written before it.

    `keep_rows` reopens an existing log for a resumed run: rows past that count (written after the checkpoint
    the run resumes from, perhaps half-written) are dropped, so that every row ends up in the file exactly once.
    """

    def __init__(self, path: Path, columns: Sequence[str], keep_rows: int | None = None) -> None:
        self.path, self.columns = path, columns
        lines = [",".join(columns) + "\n"]
        if keep_rows is not None:
            with path.open(newline="") as file:
                lines = file.readlines()[: keep_rows + 1]
        write_atomic("".join(lines), path)
        self.rows = len(lines) - 1

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        with self.path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns, lineterminator="\n")
            writer.writerows({key: _format(value) for key, value in row.items()} for row in rows)
            file.flush()
            os.fsync(file.fileno())
        self.rows += len(rows)


class DiscardLog:
    """A CsvLog that writes nothing but counts its rows: the logs of processes other than rank 0."""

    def __init__(self, _path: Path, _columns: Sequence[str], keep_rows: int | None = None) -> None:
        self.rows = keep_rows or 0

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.rows += len(rows)


def _format(value: Any) -> Any:
    # Seven significant digits keep the CSVs readable and the counts exact (they are ints, untouched).
    return f"{value:.7g}" if isinstance(value, float) and math.isfinite(value) else value


def save_atomic(payload: Any, path: Path) -> None:
    """`torch.save` to a temporary file, then rename: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def write_atomic(text: str, path: Path) -> None:
    """Write a text file through a temporary file and a rename."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _load(path: Path) -> Any:
    """What `torch.save` put in `path` (tensors on the CPU), or a one-line error for a missing or foreign file."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give the path of a saved model (e.g. a run's model.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: pickle and zip errors vary
        raise UserError(
            f"checkpoint {path} cannot be read ({type(error).__name__}); is it a torch.save file?"
        ) from error


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A model state_dict and what the file says beside it (`trained_on`, `iteration`; nothing for a plain
    state_dict)."""
    payload = _load(path)
    if isinstance(payload, dict) and "model" in payload:
        return payload["model"], {key: value for key, value in payload.items() if key != "model"}
    return payload, {}


def load_model_state(path: Path) -> dict[str, torch.Tensor]:
    """A model state_dict from a plain state_dict file or from one of this tool's checkpoints."""
    return load_checkpoint(path)[0]


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """What keeps `given` from loading into a model whose state_dict is `expected` ('' if it fits), on one line."""

    def listed(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [
        f"{key} is {tuple(given[key].shape)}, model wants {tuple(expected[key].shape)}"
        for key in expected
        if key in given and given[key].shape != expected[key].shape
    ]
    problems = [
        f"missing keys {listed(missing)}" if missing else "",
        f"unexpected keys {listed(unexpected)}" if unexpected else "",
        f"shapes differ: {listed(shapes)}" if shapes else "",
    ]
    return "; ".join(problem for problem in problems if problem)
