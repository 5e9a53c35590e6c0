"""`prune-run`: the only module that reads the Hydra config; it hands typed dataclasses to the pipeline."""

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pruning_cli.config import RunConfig
from pruning_cli.errors import UserError
from pruning_cli.pipeline import run


def register_configs() -> None:
    """Put the typed schema in Hydra's ConfigStore; `configs/config.yaml` lists it first in its defaults."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def format_summary(rows: list[dict[str, Any]], out_dir: Path) -> str:
    """One screen: dense vs final accuracy, parameters and compression, and where the outputs are."""
    dense, final = rows[0], rows[-1]
    lines = [
        f"{'':10}{'top-1':>9}{'top-5':>9}{'params':>12}{'compression':>13}",
        *(
            f"{label:10}{row['top1']:9.2%}{row['top5']:9.2%}{row['params_nonzero']:12,}{row['compression']:12.1f}x"
            for label, row in (("dense", dense), ("pruned", final))
        ),
        f"top-1 change: {100 * (final['top1'] - dense['top1']):+.2f} points; outputs in {out_dir}",
    ]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://pruning_cli.configs", config_name="config")
def _run_from_hydra(cfg: DictConfig) -> None:
    config: RunConfig = OmegaConf.to_object(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        rows = run(config, out_dir)
    except UserError as error:
        # One line, no traceback; SystemExit passes through Hydra's error reporting untouched.
        print(f"prune-run: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(rows, out_dir))


def main() -> None:
    """Console-script entry point."""
    register_configs()
    _run_from_hydra()


if __name__ == "__main__":
    main()
