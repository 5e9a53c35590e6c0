"""Dropout for retraining a pruned layer (Han et al. 2015, section 3.2, equation 2)."""

import math


def rescaled_dropout(original_rate: float, connections_original: int, connections_kept: int) -> float:
    """`D_r = D_o * sqrt(C_r / C_o)`: a sparser layer already has less capacity to over-fit, so drop less."""
    if connections_original <= 0:
        raise ValueError("a layer needs at least one connection to rescale its dropout")
    return original_rate * math.sqrt(connections_kept / connections_original)
