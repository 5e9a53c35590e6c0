"""Runs that survive being killed, stop cleanly on signals and faults, and repeat exactly."""

import re
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
from runs import PRUNE_RUN, SMOKE, prune_run, run_in_process, without_wall_time

from pruning_cli.errors import UserError

# Big enough that one retraining epoch takes a noticeable fraction of a second, so a kill lands inside one.
LONG = [
    "dataset=synthetic", "dataset.num_train=2048", "dataset.num_test=512", "train.epochs=1", "retrain.epochs=3",
    "train.batch_size=32", "retrain.batch_size=32", "pruning.iterations=2",
]  # fmt: skip
SHORT = [*SMOKE, "pruning.iterations=2"]  # where no kill has to land inside an epoch


def _start(out_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [PRUNE_RUN, *LONG, f"hydra.run.dir={out_dir}"], cwd=out_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for_retraining(out_dir, process: subprocess.Popen, step: int, timeout: float = 120) -> None:
    """Wait until the retraining phase at `step` (2: iteration 1, 4: iteration 2) has checkpointed an epoch."""
    state, deadline = out_dir / "checkpoints" / "last.pt", time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if state.is_file():
            try:
                progress = torch.load(state, weights_only=True)
            except Exception:  # caught mid-rename: try again
                progress = None
            if progress and progress["step"] == step and progress["phase"]["epochs_done"] >= 1:
                return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached the retraining phase of step {step}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    run_in_process(out_dir, *LONG)
    return out_dir


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("finished")
    run_in_process(out_dir, *SHORT)
    return out_dir


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_gives_the_uninterrupted_csvs(uninterrupted, tmp_path):
    process = _start(tmp_path)
    _wait_for_retraining(tmp_path, process, step=2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    assert "prune-run: stopped by SIGTERM; progress up to the last completed epoch is in" in stderr
    assert f"resume with: prune-run {' '.join(LONG)} hydra.run.dir={tmp_path}" in stderr

    process = _start(tmp_path)  # resumes, and is killed without warning in the second retraining
    _wait_for_retraining(tmp_path, process, step=4)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(pd.read_csv(tmp_path / "metrics.csv")) < 5 and not (tmp_path / "model.pt").exists()
    done = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["phase"]["epochs_done"]

    resumed = prune_run(*LONG, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    trained = re.findall(r"\] - (.+?) epoch (\d+)/\d+:", resumed.stdout + resumed.stderr)
    assert trained == [("retraining 2", str(epoch)) for epoch in range(done + 1, 4)]  # only the epochs left
    for name in ("metrics.csv", "layers.csv", "epochs.csv"):
        pd.testing.assert_frame_equal(without_wall_time(tmp_path / name), without_wall_time(uninterrupted / name))
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    expected = torch.load(uninterrupted / "model.pt", weights_only=True)
    assert all(torch.equal(final[key], expected[key]) for key in expected)


def test_same_seed_gives_the_same_numbers(finished, tmp_path):
    run_in_process(tmp_path, *SHORT, "resume=false")
    for name in ("metrics.csv", "layers.csv", "epochs.csv"):
        pd.testing.assert_frame_equal(without_wall_time(tmp_path / name), without_wall_time(finished / name))


def test_resuming_with_another_config_is_refused(finished):
    with pytest.raises(UserError, match=f"{finished} holds a run with a different configuration"):
        run_in_process(finished, *SHORT, "seed=7")


def test_what_does_not_change_the_numbers_does_not_stop_a_resume(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "model.pt").unlink()  # as if it had stopped after its last step
    metrics_before = (run_dir / "metrics.csv").read_text()
    run_in_process(run_dir, *SHORT, "dataset.eval_batch_size=100", "deterministic=true", "device=cpu")
    assert (run_dir / "metrics.csv").read_text() == metrics_before and (run_dir / "model.pt").is_file()


def test_a_checkpoint_that_lost_its_sparsity_is_refused_on_resume(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state["model"]["fc2.weight"][~state["masks"]["fc2"]] = 0.5  # sparsity lost, as a buggy tool would save it
    torch.save(state, run_dir / "checkpoints" / "last.pt")
    metrics_before = (run_dir / "metrics.csv").read_text()
    with pytest.raises(UserError, match="has non-zero pruned weights in fc2") as refused:
        run_in_process(run_dir, *SHORT)
    assert str(refused.value).startswith(f"cannot resume: {run_dir / 'checkpoints' / 'last.pt'}")
    assert (run_dir / "metrics.csv").read_text() == metrics_before


def test_a_truncated_state_file_is_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError) as refused:
        run_in_process(tmp_path, *SHORT)
    assert str(refused.value).startswith(f"cannot resume: {tmp_path / 'checkpoints' / 'last.pt'} is unreadable")


def test_a_corrupt_dense_checkpoint_is_named(tmp_path):
    (tmp_path / "dense.pt").write_text("not a checkpoint")
    with pytest.raises(UserError) as refused:
        run_in_process(tmp_path / "run", *SHORT, f"train.checkpoint={tmp_path / 'dense.pt'}")
    assert str(refused.value).startswith(f"checkpoint {tmp_path / 'dense.pt'} cannot be read (UnpicklingError)")


def test_a_missing_dense_checkpoint_is_named(tmp_path):
    with pytest.raises(UserError) as refused:
        run_in_process(tmp_path, *SHORT, "train.checkpoint=/nonexistent/dense.pt")
    assert str(refused.value) == (
        "checkpoint /nonexistent/dense.pt does not exist; give the path of a saved model (e.g. a run's model.pt)"
    )


def test_a_diverging_loss_names_iteration_phase_and_epoch(tmp_path):
    with pytest.raises(
        UserError, match=r"training loss became NaN or infinite in iteration 0 \(dense training\), epoch 1"
    ):
        run_in_process(tmp_path, *SHORT, "train.lr=1e30")
