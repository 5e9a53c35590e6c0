"""The installed `prune-run` end to end in a subprocess: what only the real command shows (its summary, its log,
one-line errors and exit codes), and that it runs from any directory. The rest of its behaviour is tested in
process (test_pipeline.py, test_configs.py)."""

import subprocess
import sys

import pandas as pd
import pytest
import torch
from runs import LENET5_PAPER_KEPT, REPOSITORY, SMOKE, prune_run

from pruning_cli.cli import check_output_dir

TINY = [*SMOKE, "pruning.iterations=1", "train.epochs=1"]


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.slow
def test_a_run_prints_its_summary_and_logs_every_epoch(tmp_path):
    result = prune_run("model=lenet5", *SMOKE, "pruning.iterations=2", LENET5_PAPER_KEPT, f"hydra.run.dir={tmp_path}",
                       cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "compression" in result.stdout and "12.4x" in result.stdout and "top-1 change:" in result.stdout
    log = (tmp_path / "prune-run.log").read_text()
    assert "dense training epoch 2/2: train loss" in log and "retraining 2 epoch 1/1" in log
    assert pd.read_csv(tmp_path / "metrics.csv").params_nonzero.iloc[-1] == 34_860
    assert (tmp_path / "run.json").is_file() and (tmp_path / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_a_key_of_another_data_set_kind_fails_with_hydras_message(tmp_path):
    stderr = _one_line_error(
        prune_run("dataset=mnist", "dataset.num_classes=100", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    )
    assert "Key 'num_classes' not in 'MnistLikeDataset'" in stderr


@pytest.mark.slow
def test_a_bad_setting_is_one_line_and_exit_2_before_training(tmp_path):
    result = prune_run(*SMOKE, "pruning.kept={fc1:1.5}", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "prune-run: error: kept fraction of layer fc1 is 1.5; it must be in (0, 1]\n"
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_python_dash_m_runs_from_the_repository_root(tmp_path):
    command = [sys.executable, "-m", "pruning_cli.cli", *TINY, f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(tmp_path / "run" / "metrics.csv").phase.tolist() == ["train", "prune", "retrain"]


@pytest.mark.slow
def test_prune_run_runs_from_the_repository_root(tmp_path):
    result = prune_run(*TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert set(state) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}


@pytest.mark.slow
def test_python_dash_m_pytest_runs_from_the_repository_root():
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_configs.py"]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_an_unwritable_output_directory_is_refused_before_hydra_starts(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as refused:
        check_output_dir([*SMOKE, f"hydra.run.dir={tmp_path / 'a_file' / 'run'}"])
    assert refused.value.code == (
        f"prune-run: error: cannot write the output directory {tmp_path / 'a_file' / 'run'} (Not a directory)"
    )
