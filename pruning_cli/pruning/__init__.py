"""Pruning math: thresholds, masks, counts and schedules, as pure functions on tensors."""
