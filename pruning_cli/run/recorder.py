"""The rows a run logs: after every phase an evaluation on the test split (and on the validation split, when the
run holds one out), with parameter and per-layer counts (metrics.csv, layers.csv), and after every training epoch
its loss and throughput (epochs.csv).

The test split is only reported here; nothing the run decides reads it. The validation columns sit beside the
test columns so that a decision's data (validation) and its result (test) can be read side by side.
"""

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

from pruning_cli.data import ImageData
from pruning_cli.pruning.masks import count_nonzero
from pruning_cli.pruning.stats import layer_stats
from pruning_cli.pruning.step import LayerPruned
from pruning_cli.records.contract import EPOCHS, LAYERS, METRICS, CsvSchema
from pruning_cli.records.files import CsvLog, DiscardLog
from pruning_cli.training.activations import InputDensity
from pruning_cli.training.loop import EpochStats, evaluate

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """An experiment tracker (logger=tensorboard, mlflow) beside the CSVs: it receives every row written to them with
    its step, one axis for all the files (`Recorder.step`), which a resumed run continues."""

    def start(self, step: int) -> None:
        """Open at `step`: 0 for a new run; for a resumed one, its next row's (what was logged from there on before
        the stop is dropped or skipped: each step is logged once)."""

    def log(self, file: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        """The rows of one CSV (`file`, the records contract's name) written at `step`."""

    def finish(self, final: Mapping[str, float], artifacts: Sequence[Path]) -> None:
        """A finished run: its final figures (the last metrics.csv row) and its files."""

    def close(self) -> None:
        """Release the tracker; a run stopped or failed before `finish` stays resumable."""


class Recorder:
    """Appends a run's rows to its CSVs (rank 0 writes; other processes only count their rows).

    `kept_rows` reopens the CSVs of a resumed run, cut back to the rows its checkpoint had seen.
    """

    def __init__(
        self,
        out_dir: Path,
        layers: Mapping[str, nn.Module],
        positions: Mapping[str, int],
        data: ImageData,
        eval_batch_size: int,
        writes: bool = True,
        kept_rows: Mapping[str, int] | None = None,
    ) -> None:
        self.layers, self.positions, self.data = layers, positions, data  # positions: of each layer's outputs
        self.eval_batch_size, self.writes = eval_batch_size, writes

        def open_log(schema: CsvSchema) -> CsvLog | DiscardLog:
            keep = None if kept_rows is None else kept_rows.get(schema.file)  # older state: a fresh epochs.csv
            return (CsvLog if writes else DiscardLog)(out_dir / schema.file, schema.columns, keep)

        self.logs = {schema.file: open_log(schema) for schema in (METRICS, LAYERS, EPOCHS)}
        self.tracker: Tracker | None = None

    @property
    def step(self) -> int:
        """The step of the next row in a tracker: the rows of metrics.csv and epochs.csv so far, so every row of
        either has its own step, and a resumed run, its CSVs cut back to its state, goes on from there."""
        return self.logs[METRICS.file].rows + self.logs[EPOCHS.file].rows

    def track(self, tracker: Tracker | None) -> None:
        """Send every row from now on to `tracker` too (rank 0 only, like the CSVs)."""
        if tracker is not None and self.writes:
            self.tracker = tracker
            tracker.start(self.step)

    def _write(self, schema: CsvSchema, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        self.logs[schema.file].write(rows)
        if self.tracker is not None:
            self.tracker.log(schema.file, rows, step)

    def rows(self) -> dict[str, int]:
        """How many rows each CSV holds: saved with the run's state, to cut the CSVs back on resume."""
        return {file: csv_log.rows for file, csv_log in self.logs.items()}

    def epoch(self, iteration: int, phase: str, stats: EpochStats, description: str, epochs: int) -> None:
        """One row of epochs.csv, and the same line in the log."""
        row = {"iteration": iteration, "phase": phase, **asdict(stats), "images_per_second": stats.images_per_second}
        self._write(EPOCHS, [row], self.step)
        log.info(
            f"{description} epoch {stats.epoch}/{epochs}: train loss {stats.train_loss:.4f}, "
            f"{stats.images_per_second:,.0f} images/s"
        )

    def phase(
        self,
        model: nn.Module,
        key: dict[str, int | str],
        epochs: int,
        started: float,
        train_loss: float,
        pruned: Mapping[str, LayerPruned] | None = None,
        bits: Mapping[str, int] | None = None,
        verdict: Mapping[str, float | int | str] | None = None,
    ) -> None:
        """Evaluate `model` on the test (and validation) split and append the rows of the phase `key` (iteration,
        phase) that began at `started` (time.perf_counter); `bits` gives a quantized layer's index width, and its row
        then counts the distinct values its survivors share; `verdict`, what a policy's decision on this model read
        (a walk step's test)."""
        if not self.writes:
            return
        with InputDensity(self.layers) as density:
            evaluation = evaluate(model, self.data.test, self.eval_batch_size)
        validation = {}
        for prefix, split in (("val", self.data.val), ("confirm", self.data.confirm)):
            if split is not None:
                held_out = evaluate(model, split, self.eval_batch_size)
                validation |= {f"{prefix}_top1": held_out.top1, f"{prefix}_loss": held_out.loss}
        parameters = list(model.parameters())
        total, nonzero = sum(parameter.numel() for parameter in parameters), count_nonzero(parameters)
        metrics = {
            **key,
            "epochs": epochs,
            "params_total": total,
            "params_nonzero": nonzero,
            "compression": total / nonzero,
            **asdict(evaluation),
            **validation,
            "train_loss": train_loss,
            "seconds": time.perf_counter() - started,
            **(verdict or {}),
        }
        self._write(METRICS, [metrics], step := self.step)
        self._write(LAYERS, self._layer_rows(key, density.fractions(), pruned or {}, bits or {}), step)

    def _layer_rows(
        self,
        key: dict[str, int | str],
        inputs_nonzero: dict[str, float],
        pruned: Mapping[str, LayerPruned],
        bits: Mapping[str, int],
    ) -> list[dict]:
        rows = []
        for name, layer in self.layers.items():
            record = {}
            if (step := pruned.get(name)) is not None:
                record = {"std": step.std, "threshold": step.threshold, "sensitivity": step.sensitivity}
            if name in bits:
                weight = layer.weight.detach()
                record = {"bits": bits[name], "shared_values": int(weight[weight != 0].unique().numel())}
            stats = layer_stats(layer.weight, self.positions[name], getattr(layer, "groups", 1))
            rows.append({**key, "layer": name, **record, **stats, "inputs_nonzero": inputs_nonzero[name]})
        return rows


def weights_of(layers: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """The prunable weight of each layer, by the paper's layer name."""
    return {name: layer.weight for name, layer in layers.items()}
