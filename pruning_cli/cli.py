"""`prune-run`: the only module that reads the Hydra config; it hands typed dataclasses to the pipeline.

The configs are `configs/` at the top of a clone, shipped inside the package as `pruning_cli/configs`; they are
found by file path, so `prune-run`, `python -m pruning_cli.cli` and torchrun work from any directory, with an
installed or an editable package, and from a clone's root (where the source tree shadows the installed package).
"""

import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pruning_cli.config.schema import GROUP_SCHEMAS, RunConfig, SensitivityTask
from pruning_cli.errors import UserError
from pruning_cli.parallel.shard import Shard
from pruning_cli.policies import schemas as policy_schemas
from pruning_cli.records.contract import SENSITIVITY, STATE_FILE, config_tree, flatten
from pruning_cli.run.pruning_run import run
from pruning_cli.trackers import build_tracker
from pruning_cli.training.loop import StopRequested


def config_dir() -> str:
    """The folder of the YAML configs: inside the installed package, else at the top of the source tree."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return str(installed if (installed / "config.yaml").is_file() else package.parent / "configs")


_REGISTERED: dict[tuple[str | None, str], object] = {}  # what this process put in the ConfigStore


def register_configs() -> None:
    """Put the typed schemas in Hydra's ConfigStore: the run's (first in `config.yaml`'s defaults) and one per
    kind of each group's choices (first in each choice's defaults). A schema already stored is not stored again:
    storing converts it to an OmegaConf node, a sixth of each `compose_config` under the profiler."""
    store = ConfigStore.instance()
    schemas = {(None, "run_schema"): RunConfig}
    for group, group_schemas in {**GROUP_SCHEMAS, "pruning": policy_schemas()}.items():
        schemas.update({(group, name): schema for name, schema in group_schemas.items()})
    for (group, name), schema in schemas.items():
        if _REGISTERED.get((group, name)) != schema:
            store.store(group=group, name=name, node=schema)
            _REGISTERED[group, name] = schema


def compose_config(*overrides: str) -> RunConfig:
    """The typed config `prune-run OVERRIDES...` runs with (for scripts and tests: no output directory)."""
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))


def format_summary(metrics: pd.DataFrame, out_dir: Path, analysis: bool = False) -> str:
    """One screen: dense vs pruned (and quantized) accuracy, parameters and compression, and where the outputs are."""
    dense = metrics.iloc[0]
    if analysis:
        return (
            f"dense model: test top-1 {dense.top1:.2%}; layer sensitivity on the validation split in "
            f"{out_dir / SENSITIVITY.file}"
        )
    final, quantized = metrics[metrics.phase != "quantize"].iloc[-1], metrics[metrics.phase == "quantize"]
    lines = [
        f"{'':10}{'top-1':>9}{'top-5':>9}{'params':>12}{'compression':>13}",
        *(
            f"{label:10}{row.top1:9.2%}{row.top5:9.2%}{row.params_nonzero:12,}{row.compression:12.1f}x"
            for label, row in (
                ("dense", dense),
                ("pruned", final),
                *(("quantized", row) for _, row in quantized.iterrows()),
            )
        ),
        f"top-1 change: {100 * (final.top1 - dense.top1):+.2f} points{held_out_changes(dense, final)}; outputs in "
        f"{out_dir}",
    ]
    if len(quantized):
        change = 100 * (quantized.top1.iloc[-1] - final.top1)
        lines.append(
            f"quantization: {change:+.2f} points against the pruned model; prune-export --format deep writes it"
        )
    return "\n".join(lines)


def held_out_changes(dense: pd.Series, final: pd.Series) -> str:
    """The same change on the validation and confirmation splits, where the run holds them out."""
    splits = (("validation", "val_top1"), ("confirmation", "confirm_top1"))
    changes = [f"{name} {100 * (final[key] - dense[key]):+.2f}" for name, key in splits if pd.notna(final.get(key))]
    return f" ({', '.join(changes)})" if changes else ""


class StopSignal:
    """SIGINT/SIGTERM set a flag that the training loop polls between batches; a second signal stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None

    def __call__(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, _frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    @contextmanager
    def installed(self) -> Iterator["StopSignal"]:
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _run_from_hydra(cfg: DictConfig) -> None:
    config: RunConfig = OmegaConf.to_object(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    stop, shard = StopSignal(), Shard.from_environment()
    try:
        tracker = build_tracker(config.logger, out_dir, tracker_store_dir(out_dir), flatten(config_tree(config)))
        with stop.installed():
            metrics = run(config, out_dir, stop, shard, tracker)
    except StopRequested:
        if shard.is_main:
            overrides = " ".join(HydraConfig.get().overrides.task)
            print(
                f"prune-run: stopped by {signal.Signals(stop.received).name}; progress up to the last completed "
                f"epoch is in {out_dir / STATE_FILE}; resume with: prune-run {overrides} hydra.run.dir={out_dir}",
                file=sys.stderr,
            )
        sys.exit(128 + (stop.received or signal.SIGTERM))  # another rank may have received the signal
    except UserError as error:
        # One line, no traceback; SystemExit passes through Hydra's error reporting untouched.
        if shard.is_main:
            print(f"prune-run: error: {error}", file=sys.stderr)
        sys.exit(2)
    if metrics is not None:
        print(format_summary(metrics, out_dir, isinstance(config.task, SensitivityTask)))


def tracker_store_dir(out_dir: Path) -> Path:
    """Where a tracker's shared store goes by default: the sweep directory of a multirun (one experiment for all
    its jobs), else the run directory."""
    hydra_config = HydraConfig.get()
    return Path(hydra_config.sweep.dir).absolute() if hydra_config.mode == RunMode.MULTIRUN else out_dir


def check_output_dir(arguments: list[str]) -> None:
    """Refuse an output directory that cannot be created or written, before Hydra fails on it with a traceback."""
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key.lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") and value:
            try:
                Path(value).expanduser().mkdir(parents=True, exist_ok=True)
                tempfile.TemporaryFile(dir=Path(value).expanduser()).close()
            except OSError as error:
                sys.exit(f"prune-run: error: cannot write the output directory {value} ({error.strerror})")


def distributed_arguments(arguments: list[str], shard: Shard) -> list[str]:
    """The command line of one torchrun process: every process must write into the same run directory, and only
    rank 0 writes Hydra's files and the log."""
    if not shard.distributed:
        return arguments
    if any(argument in ("-m", "--multirun") for argument in arguments):
        raise UserError("a multirun cannot run under torchrun: start one torchrun per job")
    if not any(argument.lstrip("+").startswith("hydra.run.dir=") for argument in arguments):
        raise UserError(
            f"under torchrun ({shard.world_size} processes) give hydra.run.dir=DIR, so that every process uses "
            "the same output directory"
        )
    if shard.is_main:
        return arguments
    logging_groups = ("hydra/job_logging=", "hydra/hydra_logging=")
    kept = [argument for argument in arguments if not argument.lstrip("+").startswith(logging_groups)]
    return [*kept, "hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def main() -> None:
    """Console-script entry point."""
    try:
        sys.argv[1:] = distributed_arguments(sys.argv[1:], Shard.from_environment())
    except UserError as error:
        print(f"prune-run: error: {error}", file=sys.stderr)
        sys.exit(2)
    check_output_dir(sys.argv[1:])
    register_configs()
    # Hydra then raises what it cannot compose (a wrong type, an unknown key) instead of printing it over several
    # lines, and it is reported here in one; this process ends with the run, so the setting goes no further.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _run_from_hydra()
    except (CompactHydraException, OmegaConfBaseException) as error:
        print(f"prune-run: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)


def one_line(error: BaseException) -> str:
    """A Hydra / OmegaConf error and its cause in one line, without OmegaConf's node details or Hydra's search path,
    e.g. "Error merging override pruning.budget=abc: Value 'abc' of type 'str' could not be converted to Float"."""
    details = ("full_key:", "reference_type=", "object_type=")
    parts = []
    for message in (error, error.__cause__):
        lines = str(message or "").split("Config search path:")[0].splitlines()
        parts.append(" ".join(line.strip() for line in lines if line.strip() and not line.strip().startswith(details)))
    return ": ".join(part for part in parts if part)


if __name__ == "__main__":
    main()
