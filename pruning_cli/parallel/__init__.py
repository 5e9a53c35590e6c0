"""Processes under torchrun (`shard`): each process's share of a batch, the collectives and the DDP wrapping.
Imports nothing of the package: data, training and the run share it."""
