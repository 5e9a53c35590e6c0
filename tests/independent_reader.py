"""A second reader of `prune-export`'s binary files (`model_compact.bin`, `model_quantized.bin`, `model_deep.bin`),
written from docs/formats.md alone and importing nothing from `pruning_cli`:
a file that this reader and `pruning_cli.sparse` both decode to the same weights follows the documented format,
not merely the writer's own idea of it."""

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

MAGIC = b"PRNC"
# version -> the entry kinds it may hold ("version 1 files (kinds 0 and 1)"; version 3 adds kind 4, integers)
KINDS = {1: {0, 1}, 2: {0, 1, 2, 3}, 3: {0, 1, 2, 3, 4}}
POINTER_TYPES = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}


class Cursor:
    """Reads the file's fields in order, refusing to run past its end (a truncated file is an error, not zeros)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        """The next `size` bytes."""
        if size < 0 or self.at + size > len(self.data):
            raise ValueError(f"truncated: {size} bytes wanted at offset {self.at} of {len(self.data)}")
        self.at += size
        return self.data[self.at - size : self.at]

    def unpack(self, fmt: str) -> int:
        """One little-endian integer of struct format `fmt` ("B", "H", "I")."""
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        """`count` little-endian numbers of numpy `dtype`."""
        return np.frombuffer(self.take(count * np.dtype(dtype).itemsize), dtype=dtype).copy()


def read_file(path: Path | str) -> dict[str, torch.Tensor]:
    """The file's state_dict with every entry decoded to a dense tensor (float32; int64 for kind 4), after the
    magic, version and CRC."""
    data = Path(path).read_bytes()
    if len(data) < 4 or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ValueError("CRC-32 mismatch: the file is damaged or truncated")
    cursor = Cursor(data[:-4])
    if cursor.take(4) != MAGIC:
        raise ValueError("not a PRNC file")
    version = cursor.unpack("B")
    if version not in KINDS:
        raise ValueError(f"unknown version {version}")
    cursor.take(cursor.unpack("B")).decode("ascii")  # the model name
    weights = dict(read_entry(cursor, version) for _ in range(cursor.unpack("H")))
    if cursor.at != len(cursor.data):
        raise ValueError(f"{len(cursor.data) - cursor.at} bytes after the last entry")
    return weights


def read_entry(cursor: Cursor, version: int) -> tuple[str, torch.Tensor]:
    """One entry: its key and its dense tensor."""
    key = cursor.take(cursor.unpack("H")).decode("utf-8")
    kind = cursor.unpack("B")
    if kind not in KINDS[version]:
        raise ValueError(f"{key}: kind {kind} in a version {version} file")
    shape = tuple(cursor.unpack("I") for _ in range(cursor.unpack("B")))
    return key, torch.from_numpy(BODIES[kind](cursor, shape).astype(np.int64 if kind == 4 else np.float32))


def read_dense(cursor: Cursor, shape: tuple[int, ...]) -> np.ndarray:
    """Kind 0: numel float32 values, row-major."""
    return cursor.array("<f4", int(np.prod(shape))).reshape(shape)


def read_integers(cursor: Cursor, shape: tuple[int, ...]) -> np.ndarray:
    """Kind 4: numel int64 values, row-major."""
    return cursor.array("<i8", int(np.prod(shape))).reshape(shape)


def read_compact(cursor: Cursor, shape: tuple[int, ...]) -> np.ndarray:
    """Kind 1: float32 values at positions given by fixed-width gaps."""
    order, bits, count, width = cursor.unpack("B"), cursor.unpack("B"), cursor.unpack("I"), cursor.unpack("B")
    values = cursor.array("<f4", count)
    gaps = unpack_lsb_first(cursor.take(-(-count * bits // 8)), bits, count)
    return scatter(shape, order, bits, gaps, values, read_pointers(cursor, shape, order, width))


def read_quantized(cursor: Cursor, shape: tuple[int, ...]) -> np.ndarray:
    """Kind 2: as compact, with each value a fixed-width index into the layer's codebook."""
    order, bits, index_bits, count, width = (cursor.unpack(f) for f in "BBBIB")
    codebook = cursor.array("<f4", cursor.unpack("H"))
    gaps = unpack_lsb_first(cursor.take(-(-count * bits // 8)), bits, count)
    indices = unpack_lsb_first(cursor.take(-(-count * index_bits // 8)), index_bits, count)
    values = look_up(codebook, indices)
    return scatter(shape, order, bits, gaps, values, read_pointers(cursor, shape, order, width))


def read_deep(cursor: Cursor, shape: tuple[int, ...]) -> np.ndarray:
    """Kind 3: as quantized, with the gaps and the indices Huffman-coded (canonical codes, one table per stream)."""
    order, bits, _index_bits, count, width = (cursor.unpack(f) for f in "BBBIB")
    codebook = cursor.array("<f4", cursor.unpack("H"))
    gap_lengths, index_lengths = cursor.array("<u1", 2**bits), cursor.array("<u1", len(codebook))
    gap_stream = cursor.take(cursor.unpack("I"))
    index_stream = cursor.take(cursor.unpack("I"))
    gaps = huffman_decode(gap_stream, canonical_codes(gap_lengths), count)
    values = look_up(codebook, huffman_decode(index_stream, canonical_codes(index_lengths), count))
    return scatter(shape, order, bits, gaps, values, read_pointers(cursor, shape, order, width))


BODIES: dict[int, Callable[[Cursor, tuple[int, ...]], np.ndarray]] = {
    0: read_dense,
    1: read_compact,
    2: read_quantized,
    3: read_deep,
    4: read_integers,
}


def look_up(codebook: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Entry i's value is codebook[index i]; an index outside the codebook is an error."""
    if len(indices) and int(indices.max()) >= len(codebook):
        raise ValueError(f"index {int(indices.max())} outside a codebook of {len(codebook)}")
    return codebook[indices]


def unpack_lsb_first(stream: bytes, bits: int, count: int) -> np.ndarray:
    """Entry i is bits i*bits ... i*bits+bits-1 of the stream, least significant bit first (bit k of the stream is
    bit k % 8 of byte k // 8, and the entry's first bit is its least significant)."""
    stream_bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8), bitorder="little")
    fields = stream_bits[: count * bits].reshape(count, bits).astype(np.int64)
    return fields @ (np.int64(1) << np.arange(bits, dtype=np.int64))


def canonical_codes(lengths: np.ndarray) -> dict[tuple[int, int], int]:
    """(length, code) -> symbol of a canonical table: codes in order of (length, symbol), the first all zeros, each
    next the previous plus one, shifted left when the length grows."""
    present = sorted((int(length), symbol) for symbol, length in enumerate(lengths) if length)
    table, code, previous = {}, 0, present[0][0] if present else 0
    for length, symbol in present:
        code <<= length - previous
        if code >= 1 << length:
            raise ValueError("code lengths that no prefix code has")
        table[(length, code)], code, previous = symbol, code + 1, length
    return table


def huffman_decode(stream: bytes, table: dict[tuple[int, int], int], count: int) -> np.ndarray:
    """`count` symbols from a stream of codes, most significant bit first from each byte's most significant bit."""
    stream_bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8), bitorder="big").tolist()
    longest = max((length for length, _ in table), default=0)
    symbols, length, code, at = [], 0, 0, 0
    while len(symbols) < count:
        if at == len(stream_bits) or length == longest:
            raise ValueError("Huffman stream ends early or holds a code not in its table")
        code, length, at = code << 1 | stream_bits[at], length + 1, at + 1
        if (length, code) in table:
            symbols.append(table[(length, code)])
            length, code = 0, 0
    if len(stream_bits) - at >= 8 or any(stream_bits[at:]):
        raise ValueError("Huffman stream not padded to its last byte with zero bits")
    return np.asarray(symbols, dtype=np.int64)


def line_geometry(shape: tuple[int, ...], order: int) -> tuple[int, int]:
    """(lines, positions per line) of the weight flattened to (shape[0], rest): rows for order 0, columns for 1."""
    rows = shape[0] if shape else 1
    rest = int(np.prod(shape[1:]))
    if order not in (0, 1):
        raise ValueError(f"unknown order {order}")
    return (rows, rest) if order == 0 else (rest, rows)


def read_pointers(cursor: Cursor, shape: tuple[int, ...], order: int, width: int) -> np.ndarray:
    """(lines + 1) unsigned pointers of `width` bytes."""
    if width not in POINTER_TYPES:
        raise ValueError(f"pointer width {width}")
    return cursor.array(POINTER_TYPES[width], line_geometry(shape, order)[0] + 1).astype(np.int64)


def scatter(
    shape: tuple[int, ...], order: int, bits: int, gaps: np.ndarray, values: np.ndarray, pointers: np.ndarray
) -> np.ndarray:
    """The dense weight: within a line, an entry sits at previous + gap + 1 (the line's first at its gap)."""
    lines, length = line_geometry(shape, order)
    if len(gaps) and int(gaps.max()) > 2**bits - 1:
        raise ValueError(f"a gap above 2^{bits} - 1")
    if pointers[0] != 0 or pointers[-1] != len(values) or np.any(np.diff(pointers) < 0):
        raise ValueError("pointers do not cover the entries in order")
    steps = np.cumsum(gaps + 1)
    line_of = np.repeat(np.arange(lines), np.diff(pointers))
    before = np.concatenate([[0], steps])[pointers[:-1]]  # the steps of the lines before each line
    positions = steps - before[line_of] - 1
    if len(positions) and int(positions.max()) >= length:
        raise ValueError("an entry past the end of its line")
    matrix = np.zeros((lines, length), dtype=np.float32)
    matrix[line_of, positions] = values
    return (matrix if order == 0 else matrix.T).reshape(shape)
