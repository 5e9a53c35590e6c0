"""N:M semi-structured sparsity (NVIDIA's 2:4 on Ampere and later): in every group of M consecutive weights along a
layer's input, at most N survive, the largest. The sparse tensor cores run such a layer
(torch.sparse.to_sparse_semi_structured), which unstructured masks never speed up on a GPU."""

import re

from torch import Tensor

# The shapes the semi-structured kernels take for fp16/bf16 weights (PyTorch's CUTLASS and cuSPARSELt backends):
# a 2-D weight with rows a multiple of 32 and columns a multiple of 64.
ROWS, COLUMNS = 32, 64


def parse_pattern(text: str) -> tuple[int, int]:
    """(N, 4) of an "N:4" pattern with N 1 or 2, the ones the 2:4 kernels run; ValueError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if match is None or int(match[2]) != 4 or int(match[1]) not in (1, 2):
        raise ValueError(
            f"pruning.pattern is {text}; the sparse tensor cores run 2:4 (or 1:4), e.g. pruning.pattern=2:4"
        )
    return int(match[1]), int(match[2])


def fits_semi_structured(shape: tuple[int, ...], group: int = 4) -> bool:
    """Whether a weight of `shape` can run on the semi-structured kernels (a Linear of a size they take)."""
    return len(shape) == 2 and shape[0] % ROWS == 0 and shape[1] % max(COLUMNS, group) == 0


def n_of_m_mask(weight: Tensor, mask: Tensor, n: int, m: int) -> Tensor:
    """`mask` with, in every group of `m` consecutive entries of each row, only the `n` largest surviving
    magnitudes left (ties: the first in the group); a group with fewer than `n` survivors keeps them all. The
    layer's own rule (its threshold) still holds: nothing `mask` removed comes back."""
    rows, columns = weight.shape
    if columns % m:
        raise ValueError(f"a weight of {columns} columns cannot be split into groups of {m}")
    scores = (weight.detach().abs() * mask).reshape(rows, columns // m, m)
    order = scores.argsort(dim=2, descending=True, stable=True)
    top = order.argsort(dim=2, stable=True) < n  # the rank of each entry within its group
    return mask & top.reshape(rows, columns)
