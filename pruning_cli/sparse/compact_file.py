"""The paper's compact format as a file: bit-packed relative indices, so that a device can read the pruned model;
and Deep Compression's quantized and Huffman-coded variants of it.

Layout (little-endian; docs/formats.md has it for a C reader):

    file      := "PRNC" | version u8 (1: dense and compact entries only; 2: float32 entries of any kind; 3: any,
                 integer entries too) | model name (u8 length, ASCII)
                 | entries u16 | entry ... | CRC-32 u32
    entry     := name (u16 length, UTF-8) | kind u8 (0 dense, 1 compact, 2 quantized, 3 deep, 4 integer) | ndim u8
                 | shape: ndim x u32 | body
    dense     := numel x float32, row-major
    integer   := numel x int64, row-major (a norm layer's num_batches_tracked)
    compact   := order u8 (0 by rows, 1 by columns) | bits u8 | count u32 | pointer width u8 (1, 2, 4 or 8 bytes)
                 | values: count x float32 | gaps: ceil(count x bits / 8) bytes, least significant bit first
                 | pointers: (lines + 1) x unsigned of that width (lines: rows, or columns of the flattened kernel)
    quantized := order u8 | bits u8 | index bits u8 | count u32 | pointer width u8 | codebook size u16
                 | codebook: size x float32 (entry 0 is 0.0, the value of filler entries)
                 | gaps: as in compact | indices: ceil(count x index bits / 8) bytes, least significant bit first
                 | pointers
    deep      := order u8 | bits u8 | index bits u8 | count u32 | pointer width u8 | codebook size u16 | codebook
                 | gap code lengths: 2^bits x u8 | index code lengths: codebook size x u8
                 | gap stream bytes u32 | gap stream | index stream bytes u32 | index stream | pointers

A prunable layer's weight is stored compact (encode_compact: per line, the zeros skipped before each stored value,
fillers for longer runs), or with its values replaced by indices into the layer's codebook of shared values
(quantized: fixed-width indices; deep: the gaps and the indices Huffman-coded, huffman.py); every other tensor
dense. The CRC covers every byte before it, so a damaged or truncated file is refused instead of being decoded
into wrong weights. Version 1 files (dense and compact entries only) read as before.
"""

import math
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pruning_cli.sparse import huffman
from pruning_cli.sparse.formats import Compact, decode_compact, encode_compact, pack_bits, unpack_bits

MAGIC, VERSION = b"PRNC", 3
DENSE, COMPACT, QUANTIZED, DEEP, INTEGER = 0, 1, 2, 3, 4
# What `write_compact`'s `encoding` makes of the prunable layers' weights.
ENCODINGS = {"compact": COMPACT, "quantized": QUANTIZED, "deep": DEEP}
POINTER_DTYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
MAX_SHARED_VALUES = 255  # plus the zero of filler entries: 8-bit indices at most


def write_compact(
    path: Path, model: str, state: Mapping[str, Tensor], compact_keys: set[str], encoding: str = "compact"
) -> dict[str, int]:
    """Write `encode_file`'s bytes to `path` (atomically); return its entry sizes and "total"."""
    payload, sizes = encode_file(model, state, compact_keys, encoding)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(payload)
    temporary.replace(path)
    return sizes


def encode_file(
    model: str, state: Mapping[str, Tensor], compact_keys: set[str], encoding: str = "compact"
) -> tuple[bytes, dict[str, int]]:
    """The file of `state`: the keys in `compact_keys` in `encoding` (ENCODINGS), the others dense float32; and the
    bytes of each entry and of the whole file (key "total"). ValueError if a weight cannot be stored so (a
    quantized encoding of a layer with more than 255 distinct values)."""
    integers = any(tensor.dtype == torch.int64 for tensor in state.values())
    # The lowest version that holds every entry: a device reader of version 1 reads the compact files of the paper's
    # networks, which have no integer tensors.
    version = 3 if integers else 1 if ENCODINGS[encoding] == COMPACT else 2
    header = [MAGIC, struct.pack("<B", version), _text(model, "<B"), struct.pack("<H", len(state))]
    entries = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        if tensor.dtype not in (torch.float32, torch.int64):
            raise ValueError(f"{key} is {tensor.dtype}; the compact file holds float32 and int64 tensors only")
        kind = INTEGER if tensor.dtype == torch.int64 else ENCODINGS[encoding] if key in compact_keys else DENSE
        entry = [_text(key, "<H"), struct.pack(f"<BB{tensor.dim()}I", kind, tensor.dim(), *tensor.shape)]
        entries[key] = b"".join(entry) + _body(kind, key, tensor)
    body = b"".join(header + list(entries.values()))
    payload = body + struct.pack("<I", zlib.crc32(body))
    return payload, {**{key: len(entry) for key, entry in entries.items()}, "total": len(payload)}


def _body(kind: int, key: str, tensor: Tensor) -> bytes:
    if kind == DENSE:
        return _floats(tensor)
    if kind == INTEGER:
        return tensor.contiguous().numpy().astype("<i8", copy=False).tobytes()
    compact = encode_compact(tensor)
    if kind == COMPACT:
        return _compact_body(compact)
    codebook, indices = shared_value_indices(compact["values"], key)
    return _quantized_body(compact, codebook, indices, huffman_coded=kind == DEEP)


def shared_value_indices(values: Tensor, key: str) -> tuple[Tensor, Tensor]:
    """A quantized layer's codebook (0.0, then its distinct non-zero values, ascending) and each stored value's
    index into it (fillers: 0)."""
    distinct = values[values != 0].unique()
    if len(distinct) > MAX_SHARED_VALUES:
        raise ValueError(
            f"{key} has {len(distinct):,} distinct weights; a quantized file holds at most {MAX_SHARED_VALUES} per "
            "layer (train the model with quantize=kmeans)"
        )
    indices = torch.where(values == 0, 0, torch.searchsorted(distinct, values) + 1)
    return torch.cat([values.new_zeros(1), distinct]), indices


def read_compact(path: Path) -> tuple[str, dict[str, Tensor]]:
    """The model name and the state_dict `write_compact` wrote; ValueError for a damaged or truncated file."""
    data = path.read_bytes()
    if len(data) < 4 or data[:4] != MAGIC:
        raise ValueError("not a compact model file (no PRNC header)")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ValueError("the file is damaged or truncated (CRC-32 mismatch)")
    reader = _Reader(memoryview(data)[:-4], offset=4)
    if (version := reader.unpack("<B")[0]) not in range(1, VERSION + 1):
        raise ValueError(f"format version {version}; this reader knows versions 1 to {VERSION}")
    model = reader.text("<B")
    state = {}
    for _ in range(reader.unpack("<H")[0]):
        key, (kind, ndim) = reader.text("<H"), reader.unpack("<BB")
        shape = reader.unpack(f"<{ndim}I")
        if kind == DENSE:
            state[key] = reader.floats(math.prod(shape), shape)
        elif kind == INTEGER:
            state[key] = reader.integers(math.prod(shape), shape)
        elif kind == COMPACT:
            state[key] = _read_compact_body(reader, shape)
        elif kind in (QUANTIZED, DEEP):
            state[key] = _read_quantized_body(reader, shape, huffman_coded=kind == DEEP)
        else:
            raise ValueError(f"entry {key} has unknown kind {kind}; the file is damaged")
    if reader.offset != len(reader.data):
        raise ValueError(f"{len(reader.data) - reader.offset} bytes after the last entry")
    return model, state


def _text(text: str, length_format: str) -> bytes:
    encoded = text.encode()
    return struct.pack(length_format, len(encoded)) + encoded


def _floats(tensor: Tensor) -> bytes:
    return tensor.contiguous().numpy().astype("<f4", copy=False).tobytes()


def _pointers(compact: Compact) -> tuple[int, bytes]:
    """The row (or column) pointers in the narrowest unsigned width that holds them: (width, bytes)."""
    pointers = compact["crow_indices"].long().numpy()
    width = next(size for size, dtype in POINTER_DTYPES.items() if pointers.max(initial=0) <= np.iinfo(dtype).max)
    return width, pointers.astype(POINTER_DTYPES[width]).tobytes()


def _compact_body(compact: Compact) -> bytes:
    width, pointers = _pointers(compact)
    header = struct.pack("<BBIB", int(compact["by_columns"]), compact["bits"], compact["count"], width)
    return header + _floats(compact["values"]) + compact["gaps"].numpy().tobytes() + pointers


def _quantized_body(compact: Compact, codebook: Tensor, indices: Tensor, huffman_coded: bool) -> bytes:
    width, pointers = _pointers(compact)
    bits, count, index_bits = compact["bits"], compact["count"], max(1, math.ceil(math.log2(len(codebook))))
    header = struct.pack("<BBBIBH", int(compact["by_columns"]), bits, index_bits, count, width, len(codebook))
    if not huffman_coded:
        packed = pack_bits(indices, index_bits).numpy().tobytes()
        return header + _floats(codebook) + compact["gaps"].numpy().tobytes() + packed + pointers
    streams, tables = [], []
    for symbols, alphabet in ((unpack_bits(compact["gaps"], bits, count), 2**bits), (indices, len(codebook))):
        symbols = symbols.numpy()
        lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
        tables.append(bytes(lengths))
        stream = huffman.encode(symbols, lengths)
        streams.append(struct.pack("<I", len(stream)) + stream)
    return header + _floats(codebook) + b"".join(tables) + b"".join(streams) + pointers


def _read_compact_body(reader: "_Reader", shape: tuple[int, ...]) -> Tensor:
    by_columns, bits, count, width = reader.unpack("<BBIB")
    _check_widths(bits, width)
    values = reader.floats(count, (count,))
    gaps = torch.from_numpy(np.frombuffer(reader.take(math.ceil(count * bits / 8)), dtype=np.uint8).copy())
    return _decode(shape, bool(by_columns), bits, count, values, gaps, reader.pointers(shape, by_columns, width))


def _read_quantized_body(reader: "_Reader", shape: tuple[int, ...], huffman_coded: bool) -> Tensor:
    by_columns, bits, index_bits, count, width, size = reader.unpack("<BBBIBH")
    _check_widths(bits, width)
    if not 1 <= size <= 1 << index_bits or not 1 <= index_bits <= 8:
        raise ValueError(f"a quantized entry has {size} shared values in {index_bits}-bit indices; the file is damaged")
    codebook = reader.floats(size, (size,))
    if huffman_coded:
        gap_lengths, index_lengths = list(reader.take(2**bits)), list(reader.take(size))
        runs = torch.from_numpy(huffman.decode(reader.take(reader.unpack("<I")[0]), gap_lengths, count))
        indices = torch.from_numpy(huffman.decode(reader.take(reader.unpack("<I")[0]), index_lengths, count))
        gaps = pack_bits(runs, bits)
    else:
        gaps = torch.from_numpy(np.frombuffer(reader.take(math.ceil(count * bits / 8)), dtype=np.uint8).copy())
        indices = unpack_bits(
            torch.from_numpy(np.frombuffer(reader.take(math.ceil(count * index_bits / 8)), dtype=np.uint8).copy()),
            index_bits,
            count,
        )
    if len(indices) and int(indices.max()) >= size:
        raise ValueError(f"an index points past the codebook of {size} values; the file is damaged")
    values = codebook[indices]
    return _decode(shape, bool(by_columns), bits, count, values, gaps, reader.pointers(shape, by_columns, width))


def _check_widths(bits: int, width: int) -> None:
    if width not in POINTER_DTYPES or not 1 <= bits <= 8:
        raise ValueError(f"a compact entry has {bits}-bit gaps and {width}-byte pointers; the file is damaged")


def _decode(shape, by_columns: bool, bits: int, count: int, values: Tensor, gaps: Tensor, pointers: Tensor) -> Tensor:
    compact = Compact(
        shape=tuple(shape),
        by_columns=by_columns,
        bits=bits,
        count=count,
        values=values,
        gaps=gaps,
        crow_indices=pointers,
    )
    return decode_compact(compact)


class _Reader:
    """Reads the file's fields in order; running past the end is a truncated file."""

    def __init__(self, data: memoryview, offset: int) -> None:
        self.data, self.offset = data, offset

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.data):
            raise ValueError("the file ends in the middle of an entry (truncated)")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, layout: str) -> tuple:
        return struct.unpack(layout, self.take(struct.calcsize(layout)))

    def text(self, length_format: str) -> str:
        return bytes(self.take(self.unpack(length_format)[0])).decode()

    def pointers(self, shape: tuple[int, ...], by_columns: bool, width: int) -> Tensor:
        lines = math.prod(shape[1:]) if by_columns else shape[0]
        pointers = np.frombuffer(self.take((lines + 1) * width), dtype=POINTER_DTYPES[width]).astype(np.int64)
        return torch.from_numpy(pointers)

    def floats(self, count: int, shape: tuple[int, ...]) -> Tensor:
        array = np.frombuffer(self.take(4 * count), dtype="<f4").copy()
        return torch.from_numpy(array).reshape(shape)

    def integers(self, count: int, shape: tuple[int, ...]) -> Tensor:
        array = np.frombuffer(self.take(8 * count), dtype="<i8").copy()
        return torch.from_numpy(array).reshape(shape)
