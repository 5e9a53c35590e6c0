"""Experiment trackers beside the CSVs (`logger=tensorboard`, `logger=mlflow`), each an optional extra of the package.

They satisfy `run.recorder.Tracker` (the run knows that protocol, not these modules); the CLI builds one from the
typed `logger` settings and hands it to the run. `logger=csv` builds none: the CSVs are always written.
"""

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pruning_cli.config.schema import LoggerConfig, MlflowLogger, TensorBoardLogger
from pruning_cli.errors import UserError
from pruning_cli.records.contract import MLFLOW_RUN_FILE
from pruning_cli.trackers.mlflow_tracker import MlflowTracker
from pruning_cli.trackers.tensorboard_tracker import TensorBoardTracker


def require(logger: str, module: str) -> None:
    """A one-line error naming the extra to install when `module` cannot be imported, before the run does any work."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise UserError(f'logger={logger} needs the {module} package: pip install -e ".[{logger}]"') from error


def build_tracker(
    settings: LoggerConfig, out_dir: Path, store_dir: Path, params: Mapping[str, Any]
) -> TensorBoardTracker | MlflowTracker | None:
    """The tracker `settings` asks for, writing for the run in `out_dir` (`store_dir`: the sweep directory of a
    multirun job, else `out_dir`, where MLflow's default file store goes), with the flattened config `params`."""
    if isinstance(settings, TensorBoardLogger):
        require(settings.name, "tensorboard")
        return TensorBoardTracker(out_dir / settings.save_dir, params, settings.flush_secs)
    if isinstance(settings, MlflowLogger):
        require(settings.name, "mlflow")
        uri = settings.tracking_uri or (store_dir / "mlruns").absolute().as_uri()
        return MlflowTracker(uri, settings.experiment_name, out_dir / MLFLOW_RUN_FILE, params)
    return None
