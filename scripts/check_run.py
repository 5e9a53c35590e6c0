"""Check finished runs against the paper's Table 1: accuracy change, compression, wall time, honest counts.

    python scripts/check_run.py outputs/2026-11-25/10-00-00 [more run dirs...]

For each run directory it reads metrics.csv and model.pt and prints dense vs final top-1, the compression,
the summed phase time, and whether the non-zero weights in model.pt equal the final params_nonzero minus biases.
"""

import argparse
from pathlib import Path

import pandas as pd
import torch


def check(run_dir: Path) -> dict:
    metrics = pd.read_csv(run_dir / "metrics.csv")
    state = torch.load(run_dir / "model.pt", weights_only=True)
    dense, final = metrics.iloc[0], metrics.iloc[-1]
    weights_nonzero = sum(int(torch.count_nonzero(t)) for key, t in state.items() if key.endswith("weight"))
    biases = sum(t.numel() for key, t in state.items() if key.endswith("bias"))
    return {
        "run": str(run_dir),
        "dense_top1": dense.top1,
        "final_top1": final.top1,
        "change_points": 100 * (final.top1 - dense.top1),
        "params": f"{dense.params_total:,} -> {final.params_nonzero:,}",
        "compression": final.compression,
        "phase_seconds": metrics.seconds.sum(),
        "counts_honest": weights_nonzero == final.params_nonzero - biases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    run_dirs = parser.parse_args().run_dirs
    finished = [run_dir for run_dir in run_dirs if (run_dir / "model.pt").is_file()]
    for run_dir in sorted(set(run_dirs) - set(finished)):
        print(f"skipped {run_dir}: no model.pt (the run is missing or unfinished)")
    rows = [check(run_dir) for run_dir in finished]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4f}"))


if __name__ == "__main__":
    main()
