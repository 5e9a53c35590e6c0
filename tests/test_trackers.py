"""logger=tensorboard and logger=mlflow, read back with the libraries' own readers: every CSV row's numbers at its
step, the config as hyperparameters or params, the final figures, and a resumed run that logs no step twice."""

import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from runs import SMOKE, compose_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from pruning_cli import cli
from pruning_cli.errors import UserError
from pruning_cli.records.contract import STATE_FILE, config_tree, flatten
from pruning_cli.run.pruning_run import run
from pruning_cli.trackers import build_tracker
from pruning_cli.training.loop import StopRequested

if TYPE_CHECKING:  # mlflow is imported where it is used: it takes 0.7 s of every test process's start
    from mlflow import MlflowClient

RUN = [*SMOKE, "pruning.iterations=2", "device=cpu"]


def tracked_run(
    out_dir: Path, *overrides: str, stop: Callable[[], bool] = lambda: False, store: Path | None = None
) -> pd.DataFrame:
    """`prune-run OVERRIDES` in this process with the tracker the CLI would build (`store`: a sweep's directory;
    by default the run's)."""
    config = compose_config(*RUN, *overrides)
    tracker = build_tracker(config.logger, out_dir, store or out_dir, flatten(config_tree(config)))
    return run(config, out_dir, stop, tracker=tracker)


def stopped_and_resumed(out_dir: Path, *overrides: str, store: Path | None = None) -> None:
    """A run killed after logging rows its saved state had not seen, then resumed: its state is taken back to the
    end of dense training's last epoch while it goes on through the first retraining, as if it had died there with
    rows logged past its last save."""
    snapshot = out_dir / "snapshot.pt"

    def stop() -> bool:
        epochs = out_dir / "epochs.csv"
        rows = len(pd.read_csv(epochs)) if epochs.is_file() else 0
        if rows == 2 and not snapshot.exists():
            shutil.copy(out_dir / STATE_FILE, snapshot)
        return rows >= 3

    with pytest.raises(StopRequested):
        tracked_run(out_dir, *overrides, stop=stop, store=store)
    shutil.copy(snapshot, out_dir / STATE_FILE)
    tracked_run(out_dir, *overrides, store=store)


# --- TensorBoard ------------------------------------------------------------------------------------------------------


def events(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def tensorboard_steps(log_dir: Path) -> dict[str, list[int]]:
    accumulator = events(log_dir)
    return {tag: [event.step for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_holds_every_row_at_its_step_the_config_and_the_final_figures(tmp_path):
    metrics = tracked_run(tmp_path, "logger=tensorboard")
    epochs, accumulator = pd.read_csv(tmp_path / "epochs.csv"), events(tmp_path / "tensorboard")
    # the steps number metrics.csv's and epochs.csv's rows together, in the order they were written
    top1 = accumulator.Scalars("metrics/top1")
    assert [event.value for event in top1] == pytest.approx(metrics.top1.tolist(), rel=1e-6)
    losses = [event.value for event in accumulator.Scalars("epochs/train_loss")]
    assert losses == pytest.approx(epochs.train_loss.tolist(), rel=1e-6)
    steps = sorted([event.step for event in top1] + [event.step for event in accumulator.Scalars("epochs/epoch")])
    assert steps == list(range(len(metrics) + len(epochs)))
    layers = pd.read_csv(tmp_path / "layers.csv")
    kept = [event.value for event in accumulator.Scalars("layers/kept/fc1")]
    assert kept == pytest.approx(layers[layers.layer == "fc1"].kept.tolist(), rel=1e-6)
    assert accumulator.Scalars("final/top1")[0].value == pytest.approx(metrics.top1.iloc[-1], rel=1e-6)
    assert accumulator.Scalars("final/compression")[0].step == len(metrics) + len(epochs)
    start = accumulator.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["train.epochs"].number_value == 2 and hparams["logger.name"].string_value == "tensorboard"
    experiment = accumulator.SummaryMetadata("_hparams_/experiment").plugin_data.content
    declared = plugin_data_pb2.HParamsPluginData.FromString(experiment).experiment.metric_infos
    assert "final/top1" in {info.name.tag for info in declared}


def test_a_resumed_run_logs_each_tensorboard_step_once(tmp_path):
    tracked_run(tmp_path / "uninterrupted", "logger=tensorboard")
    stopped_and_resumed(tmp_path / "resumed", "logger=tensorboard")
    expected, resumed = (tensorboard_steps(tmp_path / name / "tensorboard") for name in ("uninterrupted", "resumed"))
    assert {tag: sorted(set(steps)) for tag, steps in resumed.items()} == expected  # complete
    assert {tag: steps for tag, steps in resumed.items() if len(steps) != len(set(steps))} == {}  # unique


# --- MLflow


def mlflow_store(directory: Path) -> str:
    return (directory / "mlruns").absolute().as_uri()


def search_runs(directory: Path) -> pd.DataFrame:
    """mlflow.search_runs on the file store in `directory` (the tracking URI set for the call only)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_store(directory))
    try:
        return mlflow.search_runs(experiment_names=["prune-run"])
    finally:
        mlflow.set_tracking_uri(previous)


def mlflow_client(directory: Path) -> "MlflowClient":
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_store(directory))


def mlflow_steps(client: "MlflowClient", run_id: str) -> dict[str, list[int]]:
    keys = client.get_run(run_id).data.metrics
    return {key: [metric.step for metric in client.get_metric_history(run_id, key)] for key in keys}


def test_mlflow_holds_one_run_with_the_config_every_row_at_its_step_and_the_files(tmp_path):
    metrics = tracked_run(tmp_path, "logger=mlflow")
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    runs = search_runs(tmp_path)
    assert len(runs) == 1 and runs.status[0] == "FINISHED"
    assert runs["params.train.epochs"][0] == "2" and runs["params.logger.name"][0] == "mlflow"
    assert runs["metrics.final/top1"][0] == pytest.approx(metrics.top1.iloc[-1], rel=1e-6)
    client, run_id = mlflow_client(tmp_path), runs.run_id[0]
    top1 = client.get_metric_history(run_id, "metrics/top1")
    assert [metric.value for metric in top1] == pytest.approx(metrics.top1.tolist(), rel=1e-6)
    losses = client.get_metric_history(run_id, "epochs/train_loss")
    assert [metric.value for metric in losses] == pytest.approx(epochs.train_loss.tolist(), rel=1e-6)
    assert sorted(metric.step for metric in [*top1, *losses]) == list(range(len(metrics) + len(epochs)))
    assert {artifact.path for artifact in client.list_artifacts(run_id)} == {"model.pt", "metrics.csv"}


def test_a_resumed_job_logs_into_its_mlflow_run_each_step_once(tmp_path):
    """Two jobs of one sweep directory: one experiment, one MLflow run each; the resumed one reopened its own."""
    tracked_run(tmp_path / "uninterrupted", "logger=mlflow", store=tmp_path)
    stopped_and_resumed(tmp_path / "resumed", "logger=mlflow", store=tmp_path)
    runs = search_runs(tmp_path)
    assert sorted(runs["tags.mlflow.runName"]) == ["resumed", "uninterrupted"] and set(runs.status) == {"FINISHED"}
    client = mlflow_client(tmp_path)
    run_ids = dict(zip(runs["tags.mlflow.runName"], runs.run_id, strict=True))
    expected, resumed = (mlflow_steps(client, run_ids[name]) for name in ("uninterrupted", "resumed"))
    assert {key: sorted(set(steps)) for key, steps in resumed.items()} == {
        key: sorted(steps) for key, steps in expected.items()
    }  # complete
    assert {key: steps for key, steps in resumed.items() if len(steps) != len(set(steps))} == {}  # unique


# --- a missing extra --------------------------------------------------------------------------------------------------


@pytest.fixture
def hydra_job_in_process(monkeypatch):
    """A job Hydra starts in this process configures logging: the root logger gets a handler on this test's
    captured output and one on the run's log file. Take them off afterwards, so that no later test logs into a
    closed stream ("--- Logging error ---" in its captured stderr); main() also sets HYDRA_FULL_ERROR."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    yield
    for handler in [handler for handler in root.handlers if handler not in before]:
        if not type(handler).__module__.startswith("_pytest"):  # pytest's own come and go with each phase
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.mark.parametrize(("logger", "module"), [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
@pytest.mark.usefixtures("hydra_job_in_process")
def test_a_missing_extra_is_refused_in_one_line_before_any_file(logger, module, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    out_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["prune-run", *RUN, f"logger={logger}", f"hydra.run.dir={out_dir}"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f'prune-run: error: logger={logger} needs the {module} package: pip install -e ".[{logger}]"'
    )
    assert not (out_dir / "run.json").exists() and not (out_dir / "metrics.csv").exists()


def test_build_tracker_refuses_without_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    config = compose_config(*RUN, "logger=tensorboard")
    with pytest.raises(UserError, match=r'pip install -e "\.\[tensorboard\]"'):
        build_tracker(config.logger, tmp_path, tmp_path, {})
