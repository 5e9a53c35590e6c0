"""`prune-report DIR... [--out report]`: collect runs and sweeps into Table 1, per-layer tables and the paper's figures.

Bad input gets one line `prune-report: error: ...` on stderr and exit code 2, never a traceback.
"""

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from pruning_cli.console import OneLineParser, run_command
from pruning_cli.errors import UserError
from pruning_cli.report.collect import Collection, collect
from pruning_cli.report.plots import draw_all
from pruning_cli.report.tables import (
    CSV_FLOAT,
    layer_tables,
    layers_markdown,
    method_curves,
    methods_markdown,
    table1,
    table1_markdown,
    write_table,
)

PROG = "prune-report"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument(
        "dirs", metavar="DIR", type=Path, nargs="+", help="run directories or Hydra multirun directories (searched)"
    )
    parser.add_argument("--out", type=Path, default=Path("report"), help="output directory (default: report)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="percentage points a run's error change may exceed the paper's and still 'meet' it (default 0)",
    )
    return parser


def _usable(dirs: list[Path]) -> Collection:
    collection = collect(dirs)
    if collection.runs.empty and collection.sensitivity.empty:
        reasons = "; ".join(f"{item.path}: {item.reason}" for item in collection.skipped[:3])
        more = f" and {len(collection.skipped) - 3} more" if len(collection.skipped) > 3 else ""
        raise UserError(
            f"no usable run found in {', '.join(map(str, dirs))}"
            + (f" (skipped {reasons}{more})" if reasons else "")
            + "; give finished prune-run output directories"
        )
    return collection


def make_report(dirs: list[Path], out_dir: Path, tolerance: float = 0.0) -> str:
    """Write every table and figure into out_dir; return the summary to print."""
    if not math.isfinite(tolerance):
        raise UserError(f"--tolerance must be a finite number of points, not {tolerance}")
    collection = _usable(dirs)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create output directory {out_dir}: {error.strerror or error}") from error

    written, table1_text = _write_tables(collection, out_dir, tolerance)
    figures = draw_all(collection.runs, collection.metrics, collection.sensitivity, out_dir)
    written += [path for path, reason in figures.items() if reason is None]

    sensitivity_runs = collection.sensitivity.run.nunique()
    lines = [
        f"{PROG}: {len(collection.runs)} pruning run(s), {sensitivity_runs} sensitivity analysis run(s) -> {out_dir}",
        "wrote " + ", ".join(str(path) for path in written),
    ]
    lines += [f"not drawn: {path.name}: {reason}" for path, reason in figures.items() if reason is not None]
    lines += ["", table1_text.rstrip(), ""]
    if collection.skipped:
        lines.append(f"skipped {len(collection.skipped)}:")
        lines += [f"  {item.path}: {item.reason}" for item in collection.skipped]
    else:
        lines.append("skipped: none")
    return "\n".join(lines)


def _write_tables(collection: Collection, out_dir: Path, tolerance: float) -> tuple[list[Path], str]:
    """runs.csv, Table 1, the methods side by side and the per-layer tables; the files and Table 1's text."""
    runs_csv = out_dir / "runs.csv"
    collection.runs.to_csv(runs_csv, index=False, float_format=CSV_FLOAT)
    written = [runs_csv]
    table1_text = "Table 1: no finished pruning run (only sensitivity analyses)\n"
    if not collection.runs.empty:
        table = table1(collection.runs, tolerance)
        table1_text = table1_markdown(table, tolerance)
        written += write_table(table, table1_text, "table1", out_dir)
    curves = method_curves(collection.runs)
    for model in pd.unique(curves.model):
        rows = curves[curves.model == model]
        written += write_table(rows, methods_markdown(model, rows), f"methods_{model}", out_dir)
    for model, frame in layer_tables(collection.layers, collection.metrics, collection.storage).items():
        written += write_table(frame, layers_markdown(model, frame), f"layers_{model}", out_dir)
    return written, table1_text


def run(argv: list[str] | None = None) -> int:
    """The command; returns the exit code."""

    def command() -> str:
        args = build_parser().parse_args(argv)
        return make_report(args.dirs, args.out, args.tolerance)

    return run_command(PROG, command)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
