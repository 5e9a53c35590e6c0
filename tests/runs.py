"""How the tests run the tool: in process on the composed config (most tests), or the installed `prune-run` in a
subprocess (the few end-to-end tests marked slow)."""

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd

from pruning_cli import cli
from pruning_cli.config.schema import RunConfig
from pruning_cli.data import ImageData
from pruning_cli.run.pruning_run import PruningRun, open_run, run
from pruning_cli.run.runtime import DevicePolicy

PRUNE_RUN = str(Path(sys.executable).parent / "prune-run")
REPOSITORY = Path(__file__).resolve().parent.parent
SMOKE = [
    "dataset=synthetic", "dataset.num_train=512", "dataset.num_test=256", "train.epochs=2", "retrain.epochs=1",
    "train.batch_size=32", "retrain.batch_size=32",
]  # fmt: skip
LENET5_PAPER_KEPT = "pruning.kept={conv1:0.66,conv2:0.12,fc1:0.075,fc2:0.19}"
_COMPOSED: dict[tuple, RunConfig] = {}


def compose_config(*overrides: str) -> RunConfig:
    """`pruning_cli.cli.compose_config`, composed once per process for the same overrides and environment (the
    schemas' data roots read environment variables; pytest's own note of the current test is left out): Hydra
    takes 0.07 s a composition, and the tests ask for the same one again and again. Each caller gets its own copy
    to change."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTEST_CURRENT_TEST"}
    key = (overrides, tuple(sorted(environment.items())))
    if key not in _COMPOSED:
        _COMPOSED[key] = cli.compose_config(*overrides)
    return copy.deepcopy(_COMPOSED[key])


def run_in_process(out_dir: Path, *overrides: str) -> pd.DataFrame:
    """`prune-run OVERRIDES hydra.run.dir=OUT_DIR`, in this process: the composed config handed to the pipeline."""
    return run(compose_config(*overrides), out_dir)


def prune_run(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `prune-run` in a subprocess."""
    environment = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([PRUNE_RUN, *overrides], cwd=cwd, capture_output=True, text=True, env=environment)


def without_wall_time(path: Path) -> pd.DataFrame:
    """A CSV of a run without the columns that measure time (they differ between identical runs)."""
    return pd.read_csv(path).drop(columns=["seconds", "images_per_second"], errors="ignore")


def pruning_run_in_process(
    out_dir: Path,
    *overrides: str,
    channels_last: bool | None = None,
    transform_data: Callable[[ImageData], ImageData] = lambda data: data,
) -> PruningRun:
    """The PruningRun of `prune-run OVERRIDES`, built as `run` builds it, after all its steps, to look at its model;
    the memory format is the device policy's unless `channels_last` says otherwise, and `transform_data` may alter
    the data."""

    def adjust_runtime(runtime: DevicePolicy) -> DevicePolicy:
        return runtime if channels_last is None else replace(runtime, channels_last=channels_last)

    config = compose_config(*overrides)
    with open_run(config, out_dir, adjust_data=transform_data, adjust_runtime=adjust_runtime) as experiment:
        experiment.execute()
    return experiment
