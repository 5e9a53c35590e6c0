"""Each budgeted walk's result and the frontier it measured on the way (docs/results.md, "Budgeted pruning").

For every pruning=auto run below the given directories: the kept model's compression (biases counted) and its
top-1 change on the validation (decisions), confirmation (read by no decision) and test splits against the run's
own dense model, in points; and, from all the walk steps it retrained, the highest compression whose *test*
change stayed within 0.3 and 0.5 points lost (reported, never used), with the run's time.
Usage: python scripts/search_frontier.py OUT_DIR [OUT_DIR ...]
"""

import sys
from pathlib import Path

import pandas as pd

from pruning_cli.report.collect import collect
from pruning_cli.report.tables import markdown_table


def frontier(metrics: pd.DataFrame, dense: pd.Series, lost: float) -> float:
    """The highest compression among the retrained walk steps whose test top-1 lost at most `lost` points."""
    tried = metrics[metrics.phase == "retrain"]
    within = tried[100 * (dense.top1 - tried.top1) <= lost + 1e-9]
    return within.compression.max() if len(within) else 1.0


def main(paths: list[Path]) -> None:
    found = collect(paths)
    rows = []
    for run, metrics in found.metrics.groupby("run", sort=False):
        if "verdict" not in metrics or metrics.verdict.isna().all():
            continue  # not a walk: no retraining was tested
        dense, kept = metrics.iloc[0], metrics[metrics.phase.isin(["retrain", "rollback"])].iloc[-1]
        rows.append({
            "run": run, "walk steps": int((metrics.phase == "retrain").sum()),
            "compression": round(kept.compression, 1),
            **{f"{split} change": round(100 * (kept[column] - dense[column]), 2)
               for split, column in (("val", "val_top1"), ("confirm", "confirm_top1"), ("test", "top1"))},
            "at 0.3 lost (test)": round(frontier(metrics, dense, 0.3), 1),
            "at 0.5 lost (test)": round(frontier(metrics, dense, 0.5), 1),
            "minutes": round(metrics.seconds.sum() / 60, 1),
        })  # fmt: skip
    print(markdown_table(pd.DataFrame(rows).astype(str)) if rows else "no pruning=auto run found")


if __name__ == "__main__":
    main([Path(path) for path in sys.argv[1:]])
