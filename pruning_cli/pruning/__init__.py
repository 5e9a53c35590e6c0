"""Pruning math: thresholds, masks, counts, schedules, N:M sparsity, dropout rates and the paired bound of a drop,
as pure functions on tensors. Imports only the schemas (`config`): nothing of the policies or the run."""
