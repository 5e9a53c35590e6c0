"""`logger=mlflow`: one MLflow run per job (a multirun is one experiment), the flattened config as its params, the
CSVs' rows as metrics with their step, model.pt and metrics.csv as artifacts.

A resumed job reopens its MLflow run (its id is kept in the run directory) and skips the steps the stopped job had
logged already (a run tag says how far that was): each step is logged once.
"""

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pruning_cli.records.files import write_atomic
from pruning_cli.trackers.scalars import final_scalars, scalars

LOGGED_THROUGH = "pruning_cli.next_step"  # the run tag: the first step not logged yet
PARAM_LENGTH = 6000  # MLflow's limit on a param's value
BATCH = 100  # MLflow's limit on the params of one log_batch


class MlflowTracker:
    """Logs through an MlflowClient on `tracking_uri`; `run_file` keeps the MLflow run's id for a resumed job."""

    def __init__(self, tracking_uri: str, experiment_name: str, run_file: Path, params: Mapping[str, Any]) -> None:
        self.tracking_uri, self.experiment_name, self.run_file = tracking_uri, experiment_name, run_file
        self.params = {key: str(value)[:PARAM_LENGTH] for key, value in params.items()}
        self.client, self.run_id, self.logged_through, self.next_step, self.finished = None, "", 0, 0, False

    def start(self, step: int) -> None:
        if self.tracking_uri.startswith("file:"):  # MLflow 3 asks for an opt-in to its (maintained) file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow import MlflowClient

        self.client, self.next_step = MlflowClient(tracking_uri=self.tracking_uri), step
        run_id = self._stored_run_id() if step > 0 else None
        if run_id is None:
            self._new_run()
            return
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        self.logged_through = int(self.client.get_run(run_id).data.tags.get(LOGGED_THROUGH, 0))

    def log(self, file: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        self._log_metrics(scalars(file, rows), step)

    def finish(self, final: Mapping[str, float], artifacts: Sequence[Path]) -> None:
        self._log_metrics(final_scalars(final), self.next_step)
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")
        self.finished = True

    def close(self) -> None:
        """A job stopped or failed before its end is marked KILLED; its resume sets it running again."""
        if self.client is not None and not self.finished:
            self.client.set_terminated(self.run_id, "KILLED")
        self.client = None

    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        """Log `values` at `step` unless the stopped job this one resumes had logged that step already."""
        from mlflow.entities import Metric, RunTag

        self.next_step = max(self.next_step, step + 1)
        if step < self.logged_through or not values:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics, tags=[RunTag(LOGGED_THROUGH, str(step + 1))])

    def _new_run(self) -> None:
        """A new MLflow run in the experiment (made by the first job of a sweep), its params, and its id on disk."""
        from mlflow.entities import Param

        experiment = self.client.get_experiment_by_name(self.experiment_name)
        experiment_id = experiment.experiment_id if experiment else self._create_experiment()
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_file.parent.name).info.run_id
        params = [Param(key, value) for key, value in self.params.items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + BATCH])
        self.run_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(json.dumps({"tracking_uri": self.tracking_uri, "run_id": self.run_id}) + "\n", self.run_file)

    def _create_experiment(self) -> str:
        """Create the experiment, or take the one a parallel job of the sweep has just created."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(self.experiment_name)
        except MlflowException:
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id

    def _stored_run_id(self) -> str | None:
        """The MLflow run this job logged into before it stopped, if it is in this tracking store."""
        try:
            stored = json.loads(self.run_file.read_text())
        except (OSError, ValueError):
            return None
        return stored.get("run_id") if stored.get("tracking_uri") == self.tracking_uri else None
