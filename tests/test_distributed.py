"""Data-parallel runs under torchrun (2 CPU processes, gloo) compute what one process computes."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from runs import REPOSITORY, SMOKE, compose_config, run_in_process

from pruning_cli.cli import distributed_arguments
from pruning_cli.errors import UserError
from pruning_cli.parallel.shard import Shard
from pruning_cli.run.plan import plan_run

TIME_COLUMNS = ["seconds", "images_per_second"]


@pytest.mark.parametrize(("size", "batch_size", "expected"), [
    (10, 4, ([[0, 2], [4, 6], [8]], [[1, 3], [5, 7], [9]])),
    (9, 4, ([[0, 2], [4, 6]], [[1, 3], [5, 7]])),  # a last batch of 1 cannot feed 2 processes: dropped
    (11, 4, ([[0, 2], [4, 6], [8]], [[1, 3], [5, 7], [9]])),  # [8, 9, 10] is cut to a share of 1 each
])  # fmt: skip
def test_each_process_takes_its_part_of_every_global_batch(size, batch_size, expected):
    for rank, batches in enumerate(expected):
        shard = Shard(rank=rank, world_size=2)
        assert [batch.tolist() for batch in shard.global_batches(torch.arange(size), batch_size)] == batches
        assert shard.num_batches(size, batch_size) == len(batches)
    assert Shard().num_batches(9, 4) == 3


def test_torchrun_without_a_shared_run_dir_is_refused():
    with pytest.raises(UserError) as refused:
        distributed_arguments(SMOKE, Shard(rank=0, world_size=2))
    assert str(refused.value) == (
        "under torchrun (2 processes) give hydra.run.dir=DIR, so that every process uses the same output directory"
    )
    assert distributed_arguments(SMOKE, Shard()) == SMOKE  # one process: nothing to add
    worker = distributed_arguments([*SMOKE, "hydra.run.dir=run"], Shard(rank=1, world_size=2))
    assert worker[-3:] == ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def test_a_global_batch_the_processes_cannot_share_is_refused():
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*SMOKE, "train.batch_size=33"), processes=2)
    assert str(refused.value) == (
        "train.batch_size is 33, which 2 processes cannot share evenly; it is the global batch: make it a multiple of 2"
    )


@pytest.mark.slow
def test_torchrun_stops_on_sigterm_resumes_and_matches_one_process(tmp_path):
    """`torchrun -m pruning_cli.cli` from the repository root, stopped by SIGTERM in its first retraining and run
    again: every epoch is logged once, and the result is what one process computes, up to float rounding."""
    overrides = [
        *SMOKE,
        "train.epochs=1",
        "retrain.epochs=3",
        "pruning.iterations=2",
        "pruning.kept={fc1:0.1,fc2:0.2,fc3:0.5}",
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    command = [*torchrun, "pruning_cli.cli", *overrides, f"hydra.run.dir={tmp_path / 'ddp'}"]
    environment = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    process = subprocess.Popen(
        command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    epochs, deadline = tmp_path / "ddp" / "epochs.csv", time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # wait for the first retraining epoch
        if epochs.is_file() and "retrain" in epochs.read_text():
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0 and stderr.count("prune-run: stopped by SIGTERM") == 1  # rank 0 says it, once
    assert not (tmp_path / "ddp" / "model.pt").exists()

    resumed = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, env=environment, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("top-1 change:") == 1  # only rank 0 prints the summary
    output = resumed.stdout + resumed.stderr
    assert "dense training epoch" not in output and "retraining 2 epoch 1/3" in output  # done work is skipped
    rows = pd.read_csv(tmp_path / "ddp" / "epochs.csv")[["iteration", "phase", "epoch"]]
    assert rows.values.tolist() == [[0, "train", 1]] + [
        [i, "retrain", e] for i in (1, 2) for e in (1, 2, 3)
    ]  # every epoch exactly once across the stop
    assert pd.read_csv(tmp_path / "ddp" / "epochs.csv").images.eq(512).all()  # both halves counted
    assert (tmp_path / "ddp" / "prune-run.log").read_text().count("dense training epoch 1/1") == 1  # one writer

    run_in_process(tmp_path / "single", *overrides)
    for name in ("metrics.csv", "layers.csv", "epochs.csv"):
        ddp = pd.read_csv(tmp_path / "ddp" / name).drop(columns=TIME_COLUMNS, errors="ignore")
        one = pd.read_csv(tmp_path / "single" / name).drop(columns=TIME_COLUMNS, errors="ignore")
        pd.testing.assert_frame_equal(ddp, one, rtol=1e-4)  # same global batches; only float sums differ
    ddp_model = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    one_model = torch.load(tmp_path / "single" / "model.pt", weights_only=True)
    for key, value in one_model.items():
        assert torch.equal(ddp_model[key] == 0, value == 0), key  # the same masks
        torch.testing.assert_close(ddp_model[key], value, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_torchrun_takes_rank_0s_pruning_auto_decisions_on_a_users_module_as_one_process_does(tmp_path):
    """pruning=auto under torchrun, on a user's module (its layers discovered): every process keeps, rolls back and
    stops on rank 0's validation predictions (broadcast), and the rows and kept model are one process's. Each
    process draws its own dropout masks, so the module is one without dropout."""
    overrides = [
        *SMOKE, "model=custom", "model._target_=own_nets.Wide", "train.epochs=1", "pruning=auto",
        "dataset.val_split=128", "pruning.max_steps=3", "pruning.budget=0", "pruning.first=100", "pruning.min_kept=0",
        "pruning.end=1", "pruning.frequency=4",
    ]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    command = [*torchrun, "pruning_cli.cli", *overrides, f"hydra.run.dir={tmp_path / 'ddp'}"]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY / "tests")}  # own_nets
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_in_process(tmp_path / "single", *overrides)
    assert "rollback" in pd.read_csv(tmp_path / "single" / "metrics.csv").phase.values  # the processes must agree
    for name in ("metrics.csv", "layers.csv", "epochs.csv"):
        ddp = pd.read_csv(tmp_path / "ddp" / name).drop(columns=TIME_COLUMNS, errors="ignore")
        one = pd.read_csv(tmp_path / "single" / name).drop(columns=TIME_COLUMNS, errors="ignore")
        pd.testing.assert_frame_equal(ddp, one, rtol=1e-4)  # same global batches; only float sums differ


@pytest.mark.slow
def test_torchrun_prunes_a_torchvision_model_with_batch_norm(tmp_path):
    """A torchvision model with batch norm (its statistics per process, as DistributedDataParallel keeps them) runs
    under torchrun, and its CSVs count the weights of its model.pt."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    mobilenet = [
        "model=torchvision", "model.arch=mobilenet_v3_small", "model.input_shape=[3,32,32]", "dataset=synthetic",
        "dataset.num_train=128", "dataset.num_test=64", "train.epochs=1", "retrain.epochs=1", "pruning.iterations=1",
        "train.batch_size=16", "retrain.batch_size=16",
    ]  # fmt: skip
    command = [*torchrun, "pruning_cli.cli", *mobilenet, f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    layers = pd.read_csv(tmp_path / "layers.csv").query("phase == 'retrain'").set_index("layer")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(row.weights_nonzero == torch.count_nonzero(state[f"{layer}.weight"]) for layer, row in layers.iterrows())
