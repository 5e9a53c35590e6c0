"""One run's life: the plan built once from the config (`plan`), the phases that train, prune and retrain
(`pruning_run`), the rows they log (`recorder`), the state on disk that a resumed run continues from (`state`), the
device policy (`runtime`) and the sensitivity task (`sensitivity`).

The run may import everything below it (data, models, training, the pruning math, records, config); it reaches the
pruning policies only through the `policies` package's seam, and nothing below imports the run.
"""
