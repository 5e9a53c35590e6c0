"""The paper's compact format as a file: bit-packed relative indices, so that a device can read the pruned model.

Layout (little-endian; README.md "The compact file" has it for a C reader):

    file    := "PRNC" | version u8 = 1 | model name (u8 length, ASCII) | entries u16 | entry ... | CRC-32 u32
    entry   := name (u16 length, UTF-8) | kind u8 (0 dense, 1 compact) | ndim u8 | shape: ndim x u32 | body
    dense   := numel x float32, row-major
    compact := order u8 (0 by rows, 1 by columns) | bits u8 | count u32 | pointer width u8 (1, 2, 4 or 8 bytes)
               | values: count x float32 | gaps: ceil(count x bits / 8) bytes, least significant bit first
               | pointers: (lines + 1) x unsigned of that width (lines: rows, or columns of the flattened kernel)

A prunable layer's weight is stored compact (encode_compact: per line, the zeros skipped before each stored value,
fillers for longer runs); every other tensor dense. The CRC covers every byte before it, so a damaged or truncated
file is refused instead of being decoded into wrong weights.
"""

import math
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pruning_cli.sparse.formats import Compact, decode_compact, encode_compact

MAGIC, VERSION = b"PRNC", 1
DENSE, COMPACT = 0, 1
POINTER_DTYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def write_compact(path: Path, model: str, state: Mapping[str, Tensor], compact_keys: set[str]) -> int:
    """Write `state` (the keys in `compact_keys` compact, the others dense float32) to `path`; return its bytes."""
    parts = [MAGIC, struct.pack("<B", VERSION), _text(model, "<B"), struct.pack("<H", len(state))]
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        if tensor.dtype != torch.float32:
            raise ValueError(f"{key} is {tensor.dtype}; the compact file holds float32 tensors only")
        kind = COMPACT if key in compact_keys else DENSE
        parts += [_text(key, "<H"), struct.pack(f"<BB{tensor.dim()}I", kind, tensor.dim(), *tensor.shape)]
        parts.append(_compact_body(encode_compact(tensor)) if kind == COMPACT else _floats(tensor))
    body = b"".join(parts)
    payload = body + struct.pack("<I", zlib.crc32(body))
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(payload)
    temporary.replace(path)
    return len(payload)


def read_compact(path: Path) -> tuple[str, dict[str, Tensor]]:
    """The model name and the state_dict `write_compact` wrote; ValueError for a damaged or truncated file."""
    data = path.read_bytes()
    if len(data) < 4 or data[:4] != MAGIC:
        raise ValueError("not a compact model file (no PRNC header)")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ValueError("the file is damaged or truncated (CRC-32 mismatch)")
    reader = _Reader(memoryview(data)[:-4], offset=4)
    if (version := reader.unpack("<B")[0]) != VERSION:
        raise ValueError(f"format version {version}; this reader knows version {VERSION}")
    model = reader.text("<B")
    state = {}
    for _ in range(reader.unpack("<H")[0]):
        key, (kind, ndim) = reader.text("<H"), reader.unpack("<BB")
        shape = reader.unpack(f"<{ndim}I")
        state[key] = _read_compact_body(reader, shape) if kind == COMPACT else reader.floats(math.prod(shape), shape)
    if reader.offset != len(reader.data):
        raise ValueError(f"{len(reader.data) - reader.offset} bytes after the last entry")
    return model, state


def _text(text: str, length_format: str) -> bytes:
    encoded = text.encode()
    return struct.pack(length_format, len(encoded)) + encoded


def _floats(tensor: Tensor) -> bytes:
    return tensor.contiguous().numpy().astype("<f4", copy=False).tobytes()


def _compact_body(compact: Compact) -> bytes:
    pointers = compact["crow_indices"].long().numpy()
    width = next(size for size, dtype in POINTER_DTYPES.items() if pointers.max(initial=0) <= np.iinfo(dtype).max)
    header = struct.pack("<BBIB", int(compact["by_columns"]), compact["bits"], compact["count"], width)
    gaps = compact["gaps"].numpy().tobytes()
    return header + _floats(compact["values"]) + gaps + pointers.astype(POINTER_DTYPES[width]).tobytes()


def _read_compact_body(reader: "_Reader", shape: tuple[int, ...]) -> Tensor:
    by_columns, bits, count, width = reader.unpack("<BBIB")
    if width not in POINTER_DTYPES or not 1 <= bits <= 8:
        raise ValueError(f"a compact entry has {bits}-bit gaps and {width}-byte pointers; the file is damaged")
    values = reader.floats(count, (count,))
    gaps = torch.from_numpy(np.frombuffer(reader.take(math.ceil(count * bits / 8)), dtype=np.uint8).copy())
    lines = math.prod(shape[1:]) if by_columns else shape[0]
    pointers = np.frombuffer(reader.take((lines + 1) * width), dtype=POINTER_DTYPES[width]).astype(np.int64)
    compact = Compact(
        shape=tuple(shape), by_columns=bool(by_columns), bits=bits, count=count, values=values, gaps=gaps,
        crow_indices=torch.from_numpy(pointers),
    )  # fmt: skip
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

    def floats(self, count: int, shape: tuple[int, ...]) -> Tensor:
        array = np.frombuffer(self.take(4 * count), dtype="<f4").copy()
        return torch.from_numpy(array).reshape(shape)
