"""pruning_cli: train -> prune -> retrain experiments after Han et al. (2015)."""

__version__ = "0.1.0"
