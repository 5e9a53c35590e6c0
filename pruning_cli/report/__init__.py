"""`prune-report`: collect finished runs into tidy frames, compare them with the paper's tables, draw its figures.

collect (run dirs -> frames + skipped list) -> tables (Table 1, per-layer tables vs the paper) -> plots (PNGs).
A reader of finished runs: it imports the records contract, the models, the policies' registry and the exporter's
size report, never the run.
"""

from pruning_cli.report.collect import Collection, Skipped, collect, find_run_dirs, method_label

__all__ = ["Collection", "Skipped", "collect", "find_run_dirs", "method_label"]
