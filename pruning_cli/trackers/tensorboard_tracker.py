"""`logger=tensorboard`: the CSVs' rows as scalars in TensorBoard event files, the flattened config as the run's
hyperparameters and its final figures as their metrics (the HParams tab compares the jobs of a sweep)."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pruning_cli.trackers.scalars import final_scalars, final_tags, hyperparameter, scalars


class TensorBoardTracker:
    """One SummaryWriter in `log_dir`. A resumed run opens it with `purge_step` at its next row's step, so that
    TensorBoard drops what the stopped run logged past its saved state and each step is read once."""

    def __init__(self, log_dir: Path, params: Mapping[str, Any], flush_secs: int = 120) -> None:
        self.log_dir, self.flush_secs = log_dir, flush_secs
        self.params = {key: hyperparameter(value) for key, value in params.items()}
        self.writer, self.next_step = None, 0

    def start(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.next_step = (
            SummaryWriter(str(self.log_dir), purge_step=step, flush_secs=self.flush_secs),
            step,
        )
        if step == 0:  # the config once, at the start of the run (its summaries sit at step 0, never purged)
            experiment, session_start, _ = self._hparams()
            for summary in (experiment, session_start):
                self.writer.file_writer.add_summary(summary)

    def log(self, file: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        for tag, value in scalars(file, rows).items():
            self.writer.add_scalar(tag, value, step)
        self.next_step = max(self.next_step, step + 1)

    def finish(self, final: Mapping[str, float], artifacts: Sequence[Path]) -> None:
        """The final figures at the step after the last row, and the end of the hyperparameters' session (the
        artifacts are the run directory's own files, beside the event files)."""
        for tag, value in final_scalars(final).items():
            self.writer.add_scalar(tag, value, self.next_step)
        self.writer.file_writer.add_summary(self._hparams()[2], self.next_step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _hparams(self) -> tuple:
        from torch.utils.tensorboard.summary import hparams

        return hparams(self.params, dict.fromkeys(final_tags(), 0.0))
