"""Sparse encodings of one pruned weight, as plain dicts of tensors (so `torch.load(weights_only=True)` reads them).

A weight is seen as a matrix of rows = output units: an fc weight as it is, a conv kernel flattened to
(out_channels, in_channels * kh * kw). Two encodings:

- CSR: values, absolute column indices and row pointers, each index in the smallest integer dtype that holds it.
  This is what the export file stores and what `torch.sparse_csr_tensor` multiplies with.
- compact: the paper's storage (Deep Compression, sec. 3.5 of the pruning paper): per row, the relative index
  in k bits (5 for fc, 8 for conv), bit-packed, stored as the number of zeros skipped since the previous entry
  (0 .. 2^k - 1), so one index reaches 2^k columns ahead. A longer run of zeros is bridged by filler entries: a
  zero value after 2^k - 1 skipped zeros. Its size is what the paper's storage figures count.

Both decode back to a tensor that `torch.equal`s the weight (a pruned -0.0 comes back as +0.0, which compares equal).
"""

import math
import warnings
from typing import TypedDict

import torch
from torch import Tensor

FC_INDEX_BITS = 5
CONV_INDEX_BITS = 8

# Unsigned 8 bits, then signed types. torch.uint16/uint32 exist but few ops support them (indexing, cumsum,
# sparse constructors fail), so an index above 255 takes a signed type: int16 still covers VGG-16's 25,088 columns.
_INDEX_DTYPES = ((torch.uint8, 2**8 - 1), (torch.int16, 2**15 - 1), (torch.int32, 2**31 - 1), (torch.int64, 2**63 - 1))


class Csr(TypedDict):
    """CSR of a weight viewed as (shape[0], rest); `shape` is the weight's own shape (4-D for a conv)."""

    shape: tuple[int, ...]
    values: Tensor
    col_indices: Tensor
    crow_indices: Tensor


class Compact(TypedDict):
    """Relative k-bit indices: `gaps` packs `count` k-bit zero runs, little-endian; `count` includes the fillers.

    `by_columns`: the matrix is stored column by column (CSC); `crow_indices` then point at columns.
    """

    shape: tuple[int, ...]
    by_columns: bool
    bits: int
    count: int
    values: Tensor
    gaps: Tensor
    crow_indices: Tensor


def smallest_index_dtype(max_value: int) -> torch.dtype:
    """The narrowest integer dtype (uint8, int16, int32, int64) holding 0..max_value."""
    return next(dtype for dtype, limit in _INDEX_DTYPES if max_value <= limit)


def index_bits(weight: Tensor) -> int:
    """Bits per relative index as in the paper: 8 for a conv kernel (4-D), 5 for an fc matrix."""
    return CONV_INDEX_BITS if weight.dim() > 2 else FC_INDEX_BITS


def _as_matrix(weight: Tensor) -> Tensor:
    if weight.dim() < 2:
        raise ValueError(f"a prunable weight has at least 2 dimensions, got shape {tuple(weight.shape)}")
    return weight.detach().reshape(weight.shape[0], math.prod(weight.shape[1:]))


def encode_csr(weight: Tensor) -> Csr:
    """CSR of the non-zero entries, row by row in increasing column order."""
    matrix = _as_matrix(weight)
    rows, cols = matrix.nonzero().unbind(1)  # row-major order; one pass over the matrix, then over its entries
    crow = torch.cat([rows.new_zeros(1), torch.bincount(rows, minlength=matrix.shape[0]).cumsum(0)])
    nnz = len(cols)
    return Csr(
        shape=tuple(weight.shape),
        values=matrix[rows, cols],
        col_indices=cols.to(smallest_index_dtype(max(matrix.shape[1] - 1, 0))),
        crow_indices=crow.to(smallest_index_dtype(nnz)),
    )


def _row_of_entries(crow: Tensor) -> Tensor:
    """Row index of every stored entry, from the row pointers."""
    crow = crow.long()
    return torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff())


def _scatter(shape: tuple[int, ...], rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
    matrix = values.new_zeros(shape[0], math.prod(shape[1:]))
    matrix[rows, cols] = values
    return matrix.reshape(shape)


def decode_csr(csr: Csr) -> Tensor:
    """The dense weight back from its CSR."""
    return _scatter(csr["shape"], _row_of_entries(csr["crow_indices"]), csr["col_indices"].long(), csr["values"])


def csr_bytes(csr: Csr) -> int:
    """Bytes of values + column indices + row pointers, at the dtypes stored."""
    return sum(csr[key].nbytes for key in ("values", "col_indices", "crow_indices"))


def to_sparse_csr_tensor(csr: Csr) -> Tensor:
    """A `torch.sparse_csr_tensor` of the (rows, rest) matrix; int32 indices when they fit, as cuSPARSE prefers."""
    rows, columns = csr["shape"][0], math.prod(csr["shape"][1:])
    wide = max(columns, len(csr["values"])) > 2**31 - 1
    index_dtype = torch.int64 if wide else torch.int32
    with warnings.catch_warnings():  # torch warns once that sparse CSR is "beta"; it is what we mean to use
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            csr["crow_indices"].to(index_dtype),
            csr["col_indices"].to(index_dtype),
            csr["values"],
            size=(rows, columns),
            check_invariants=True,
        )


def pack_bits(values: Tensor, bits: int) -> Tensor:
    """Pack integers in [0, 2^bits) into a uint8 tensor of ceil(n * bits / 8) bytes, least significant bit first."""
    if bits == 8:
        return values.to(torch.uint8)
    shifts = torch.arange(bits, device=values.device)
    stream = ((values.long().unsqueeze(1) >> shifts) & 1).to(torch.uint8).flatten()
    stream = torch.cat([stream, stream.new_zeros(-len(stream) % 8)])
    weights = (2 ** torch.arange(8, device=values.device)).to(torch.uint8)
    return (stream.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """The `count` integers `pack_bits` packed, as int64."""
    if bits == 8:
        return packed[:count].long()
    stream = (packed.long().unsqueeze(1) >> torch.arange(8, device=packed.device)) & 1
    per_value = stream.flatten()[: count * bits].reshape(count, bits)
    return (per_value << torch.arange(bits, device=packed.device)).sum(dim=1)


def encode_compact(weight: Tensor, bits: int | None = None, by_columns: bool | None = None) -> Compact:
    """The paper's relative indices: per row, the zeros skipped since the previous stored column (row start: -1).

    A run of more than 2^bits - 1 zeros gets filler entries (value 0 after 2^bits - 1 zeros) until the rest fits,
    as in Deep Compression. `bits` defaults to 5 for fc and 8 for conv (`index_bits`). Deep Compression stores a
    layer as CSR or CSC; `by_columns=None` picks the smaller: an fc1 fed by images has whole pixel columns pruned
    (the border), which cost every row fillers but leave a column-wise layout empty columns for free.
    """
    if by_columns is None:
        by_rows, by_cols = encode_compact(weight, bits, by_columns=False), encode_compact(weight, bits, by_columns=True)
        return by_cols if compact_bytes(by_cols) < compact_bytes(by_rows) else by_rows
    bits = index_bits(weight) if bits is None else bits
    reach, max_run = 2**bits, 2**bits - 1
    matrix = _as_matrix(weight)
    csr = encode_csr(matrix.T.contiguous() if by_columns else matrix)
    crow, cols, values = csr["crow_indices"].long(), csr["col_indices"].long(), csr["values"]
    starts_row = torch.zeros(len(cols), dtype=torch.bool, device=cols.device)
    starts_row[crow[:-1][crow.diff() > 0]] = True
    runs = cols - torch.where(starts_row, -1, cols.roll(1)) - 1
    fillers = runs // reach
    per_entry = fillers + 1
    owner = torch.repeat_interleave(torch.arange(len(cols), device=cols.device), per_entry)
    ends = per_entry.cumsum(0)
    position = torch.arange(len(owner), device=cols.device) - (ends - per_entry)[owner]
    is_entry = position == fillers[owner]  # the last slot of each group holds the real entry
    stored_runs = torch.where(is_entry, runs[owner] - fillers[owner] * reach, max_run)
    stored_values = torch.where(is_entry, values[owner], torch.zeros((), dtype=values.dtype))
    stored_crow = torch.cat([ends.new_zeros(1), ends])[crow]
    return Compact(
        shape=tuple(weight.shape),
        by_columns=by_columns,
        bits=bits,
        count=len(owner),
        values=stored_values,
        gaps=pack_bits(stored_runs, bits),
        crow_indices=stored_crow.to(smallest_index_dtype(len(owner))),
    )


def decode_compact(compact: Compact) -> Tensor:
    """The dense weight back from its relative indices (fillers write zeros where the weight is zero anyway)."""
    steps = unpack_bits(compact["gaps"], compact["bits"], compact["count"]) + 1
    crow = compact["crow_indices"].long()
    rows = _row_of_entries(crow)
    running = torch.cat([steps.new_zeros(1), steps.cumsum(0)])
    cols = running[1:] - running[crow[:-1]][rows] - 1
    shape = compact["shape"]
    if not compact["by_columns"]:
        return _scatter(shape, rows, cols, compact["values"])
    return _scatter((math.prod(shape[1:]), shape[0]), rows, cols, compact["values"]).T.reshape(shape)


def compact_bytes(compact: Compact) -> int:
    """Bytes of values (fillers included) + bit-packed k-bit gaps + row pointers."""
    return compact["values"].nbytes + compact["gaps"].nbytes + compact["crow_indices"].nbytes
