"""Runs that survive being killed, stop cleanly on signals and faults, and repeat exactly."""

import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
from test_cli import PRUNE_RUN, prune_run

# Big enough that one retraining epoch takes a noticeable fraction of a second, so a kill lands inside one.
LONG = [
    "dataset=synthetic", "dataset.num_train=8192", "dataset.num_test=512", "train.epochs=2", "retrain.epochs=4",
    "train.batch_size=32", "retrain.batch_size=32", "pruning.iterations=2",
]  # fmt: skip


def _without_wall_time(path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns=["seconds", "images_per_second"], errors="ignore")


def _start(out_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [PRUNE_RUN, *LONG, f"hydra.run.dir={out_dir}"], cwd=out_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for_retraining(out_dir, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the first retraining phase has checkpointed at least one epoch."""
    state, deadline = out_dir / "checkpoints" / "last.pt", time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if state.is_file():
            try:
                progress = torch.load(state, weights_only=True)
            except Exception:  # caught mid-rename: try again
                progress = None
            if progress and progress["step"] == 2 and progress["phase"]["epochs_done"] >= 1:
                return
        time.sleep(0.05)
    raise AssertionError("the run never reached its first retraining phase")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    result = prune_run(*LONG, f"hydra.run.dir={out_dir}", cwd=out_dir)
    assert result.returncode == 0, result.stderr
    return out_dir


def test_sigkill_in_retraining_then_resume_gives_the_uninterrupted_csvs(uninterrupted, tmp_path):
    process = _start(tmp_path)
    _wait_for_retraining(tmp_path, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_rows = len(pd.read_csv(tmp_path / "metrics.csv"))
    assert killed_rows < 5 and not (tmp_path / "model.pt").exists()
    resumed = prune_run(*LONG, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("metrics.csv", "layers.csv", "epochs.csv"):
        pd.testing.assert_frame_equal(_without_wall_time(tmp_path / name), _without_wall_time(uninterrupted / name))
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    expected = torch.load(uninterrupted / "model.pt", weights_only=True)
    assert all(torch.equal(final[key], expected[key]) for key in expected)


def test_sigterm_stops_with_a_resume_line_and_the_rerun_finishes(uninterrupted, tmp_path):
    process = _start(tmp_path)
    _wait_for_retraining(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "prune-run: stopped by SIGTERM; progress up to the last completed epoch is in" in stderr
    assert f"resume with: prune-run {' '.join(LONG)} hydra.run.dir={tmp_path}" in stderr
    assert "Traceback" not in stderr
    assert prune_run(*LONG, f"hydra.run.dir={tmp_path}", cwd=tmp_path).returncode == 0
    pd.testing.assert_frame_equal(
        _without_wall_time(tmp_path / "metrics.csv"), _without_wall_time(uninterrupted / "metrics.csv")
    )


def test_same_seed_gives_the_same_numbers(uninterrupted, tmp_path):
    again = prune_run(*LONG, "resume=false", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(
        _without_wall_time(tmp_path / "metrics.csv"), _without_wall_time(uninterrupted / "metrics.csv")
    )


def test_resuming_with_another_config_is_refused(uninterrupted):
    result = prune_run(*LONG, "seed=7", f"hydra.run.dir={uninterrupted}", cwd=uninterrupted)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{uninterrupted} holds a run with a different configuration" in result.stderr


def test_a_checkpoint_that_lost_its_sparsity_is_refused_on_resume(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state["model"]["fc2.weight"][~state["masks"]["fc2"]] = 0.5  # sparsity lost, as a buggy tool would save it
    torch.save(state, run_dir / "checkpoints" / "last.pt")
    metrics_before = (run_dir / "metrics.csv").read_text()
    result = prune_run(*LONG, f"hydra.run.dir={run_dir}", cwd=run_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot resume: {run_dir / 'checkpoints' / 'last.pt'} has non-zero pruned weights in fc2" in result.stderr
    assert (run_dir / "metrics.csv").read_text() == metrics_before


def test_a_truncated_state_file_is_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    result = prune_run(*LONG, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot resume: {tmp_path / 'checkpoints' / 'last.pt'} is unreadable" in result.stderr


def test_a_corrupt_dense_checkpoint_is_named(tmp_path):
    (tmp_path / "dense.pt").write_text("not a checkpoint")
    result = prune_run(*LONG, f"train.checkpoint={tmp_path / 'dense.pt'}", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"checkpoint {tmp_path / 'dense.pt'} cannot be read (UnpicklingError)" in result.stderr


def test_a_diverging_loss_names_iteration_phase_and_epoch(tmp_path):
    result = prune_run(*LONG, "train.lr=1e30", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "training loss became NaN or infinite in iteration 0 (dense training), epoch 1" in result.stderr


def test_an_unwritable_output_directory_is_refused(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = prune_run(*LONG, f"hydra.run.dir={tmp_path / 'a_file' / 'run'}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr
        == f"prune-run: error: cannot write the output directory {tmp_path / 'a_file' / 'run'} (Not a directory)\n"
    )
