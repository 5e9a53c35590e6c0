"""The real command: the console script's summary, log, one-line errors and exit codes, in a subprocess where only
a process shows it (a run from the repository root) and in this process where Hydra refuses before any job starts;
the rest of its behaviour is tested in process (test_pipeline.py, test_configs.py); the installed `prune-run` from
another directory runs in test_robustness.py."""

import subprocess
import sys

import pandas as pd
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import CompactHydraException, ConfigCompositionException
from runs import REPOSITORY, SMOKE, compose_config

from pruning_cli.cli import check_output_dir, format_summary, main, one_line


@pytest.mark.slow
def test_python_dash_m_from_the_repository_root_prints_the_summary_and_logs_every_epoch(tmp_path):
    """`python -m pruning_cli.cli` where the source tree shadows the installed package (it used to find no configs)."""
    kept = "pruning.kept={fc1:0.08,fc2:0.09,fc3:0.26}"  # the paper's LeNet-300-100 fractions: 12.0x
    overrides = [*SMOKE, "dataset.num_train=128", "dataset.num_test=64", "pruning.iterations=2", kept]
    command = [sys.executable, "-m", "pruning_cli.cli", *overrides, f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "compression" in result.stdout and "12.0x" in result.stdout and "top-1 change:" in result.stdout
    log = (tmp_path / "prune-run.log").read_text()
    assert "dense training epoch 2/2: train loss" in log and "retraining 2 epoch 1/1" in log
    assert pd.read_csv(tmp_path / "metrics.csv").params_nonzero.iloc[-1] == 22_186
    assert (tmp_path / "run.json").is_file() and (tmp_path / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset=mnist", "dataset.num_classes=100"], "Could not override 'dataset.num_classes'. To append to your "
         "config use +dataset.num_classes=100: Key 'num_classes' not in 'MnistLikeDataset'"),
        (["pruning=auto", "pruning.budget=abc"], "Error merging override pruning.budget=abc: Value 'abc' of type "
         "'str' could not be converted to Float"),
    ],
)  # fmt: skip
def test_what_hydra_cannot_compose_is_one_line_and_exit_2(tmp_path, overrides, expected, monkeypatch, capsys):
    """The console script's `main` in this process (Hydra refuses before any job starts; a plan's refusal goes
    through the installed command in test_settings_ranges.py)."""
    monkeypatch.setattr(sys, "argv", ["prune-run", *overrides, f"hydra.run.dir={tmp_path}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main sets it for the rest of its process
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        GlobalHydra.instance().clear()
    assert (exited.value.code, capsys.readouterr().err) == (2, f"prune-run: error: {expected}\n")


@pytest.mark.slow
def test_python_dash_m_pytest_runs_from_the_repository_root():
    selected = "tests/test_records.py::test_where_the_data_lives_changes_neither"  # composes the configs
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", selected]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "1 passed" in result.stdout


def test_an_unwritable_output_directory_is_refused_before_hydra_starts(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as refused:
        check_output_dir([*SMOKE, f"hydra.run.dir={tmp_path / 'a_file' / 'run'}"])
    assert refused.value.code == (
        f"prune-run: error: cannot write the output directory {tmp_path / 'a_file' / 'run'} (Not a directory)"
    )


def test_the_summary_of_an_analysis_points_to_its_csv_instead_of_a_compression(tmp_path):
    metrics = pd.DataFrame(
        [{"phase": "train", "top1": 0.8977, "top5": 0.9988, "params_nonzero": 266_610, "compression": 1.0}]
    )
    assert format_summary(metrics, tmp_path, analysis=True) == (
        f"dense model: test top-1 89.77%; layer sensitivity on the validation split in {tmp_path / 'sensitivity.csv'}"
    )
    assert "compression" in format_summary(metrics, tmp_path).splitlines()[0]


def test_the_summary_gives_the_change_on_the_held_out_splits_beside_the_test_one(tmp_path):
    row = {"top5": 0.99, "params_nonzero": 100, "compression": 1.0, "confirm_top1": float("nan")}
    metrics = pd.DataFrame([
        {**row, "phase": "train", "top1": 0.9, "val_top1": 0.91, "confirm_top1": 0.89},
        {**row, "phase": "retrain", "top1": 0.8975, "val_top1": 0.9088, "confirm_top1": 0.8866},
    ])  # fmt: skip
    assert "top-1 change: -0.25 points (validation -0.12, confirmation -0.34); " in format_summary(metrics, tmp_path)
    without = metrics.assign(val_top1=float("nan"), confirm_top1=float("nan"))
    assert "top-1 change: -0.25 points; outputs in " in format_summary(without, tmp_path)


def test_hydra_errors_lose_omegaconfs_node_details_and_the_search_path():
    with pytest.raises(ConfigCompositionException) as refused:
        compose_config("pruning=none_such")
    assert one_line(refused.value) == (
        "In 'config': Could not find 'pruning/none_such' Available options in 'pruning': auto auto_schema global "
        "global_schema gradual gradual_schema iterative iterative_schema lamp lamp_schema oneshot oneshot_schema "
        "random random_schema"
    )


def test_a_malformed_override_is_one_line_too():
    """main() reports every CompactHydraException (compose and override-grammar errors alike) through one_line."""
    with pytest.raises(CompactHydraException) as refused:
        compose_config("train.lr=[1")
    assert len(one_line(refused.value).splitlines()) == 1 and "'[1'" in one_line(refused.value)


@pytest.mark.slow
def test_a_run_starts_without_importing_torchs_compiler():
    """Switching deterministic algorithms off where they are off already imports nothing: torch's switch imports
    its compiler (a second of every command's start, 3.4 s against 2.2 s for a tiny run)."""
    code = (
        "import sys; from pruning_cli.parallel.shard import Shard; from pruning_cli.run.runtime import device_policy; "
        "device_policy('cpu', False, Shard(), True).apply(); "
        "print([m for m in sys.modules if m.startswith(('torch._inductor', 'torch._dynamo'))])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPOSITORY)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr
