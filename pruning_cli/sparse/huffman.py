"""Canonical Huffman coding of small-alphabet symbol streams (Deep Compression, sec. 4: the cluster indices and the
relative sparse indices are far from uniform, so variable-length codes save another 20-30%).

A code is given by its code lengths alone (one per symbol, 0 for an absent symbol): canonical codes are assigned in
order of (length, symbol), so a file stores the lengths and the reader rebuilds the same codes. Codes are written
most significant bit first into a stream packed big-endian within each byte (numpy's `packbits` order).
"""

import heapq
from collections.abc import Sequence

import numpy as np

MAX_CODE_LENGTH = 16  # keeps the decoding table at 2^16 entries whatever the frequencies


def code_lengths(frequencies: Sequence[int], max_length: int = MAX_CODE_LENGTH) -> list[int]:
    """Huffman code lengths for symbols 0..n-1 with these frequencies (0: absent, gets length 0).

    A lone symbol gets a 1-bit code. When the optimal code is deeper than `max_length`, the frequencies are
    flattened (halved, keeping every present symbol at least 1) until it is not: a slightly longer stream, a
    bounded table.
    """
    counts = [int(count) for count in frequencies]
    if any(count < 0 for count in counts):
        raise ValueError("symbol frequencies must be >= 0")
    while True:
        lengths = _optimal_lengths(counts)
        if max(lengths, default=0) <= max_length:
            return lengths
        counts = [(count + 1) // 2 if count else 0 for count in counts]


def _optimal_lengths(counts: list[int]) -> list[int]:
    present = [symbol for symbol, count in enumerate(counts) if count]
    lengths = [0] * len(counts)
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    # heap of (weight, tie-breaker, symbols in the subtree); merging deepens every symbol of both subtrees by one
    heap = [(counts[symbol], symbol, [symbol]) for symbol in present]
    heapq.heapify(heap)
    order = len(counts)
    while len(heap) > 1:
        weight_a, _, symbols_a = heapq.heappop(heap)
        weight_b, _, symbols_b = heapq.heappop(heap)
        for symbol in symbols_a + symbols_b:
            lengths[symbol] += 1
        heapq.heappush(heap, (weight_a + weight_b, order, symbols_a + symbols_b))
        order += 1
    return lengths


def canonical_codes(lengths: Sequence[int]) -> list[int]:
    """The canonical code of each symbol (its `lengths[symbol]` low bits), 0 for absent symbols."""
    codes, code, previous = [0] * len(lengths), 0, 0
    for length, symbol in sorted((length, symbol) for symbol, length in enumerate(lengths) if length):
        code <<= length - previous
        codes[symbol], code, previous = code, code + 1, length
    if previous and code > 1 << previous:
        raise ValueError("these code lengths are not a prefix code (the Kraft sum exceeds 1)")
    return codes


def encode(symbols: np.ndarray, lengths: Sequence[int]) -> bytes:
    """The symbols' codes, concatenated and packed (the last byte padded with zero bits)."""
    symbols = np.asarray(symbols, dtype=np.int64)
    length_of = np.asarray(lengths, dtype=np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= len(length_of) or not length_of[symbols].all()):
        raise ValueError("a symbol to encode has no code")
    code_of = np.asarray(canonical_codes(lengths), dtype=np.int64)
    width = int(length_of.max(initial=1))
    symbol_lengths, symbol_codes = length_of[symbols], code_of[symbols]
    # bit j (from the most significant) of every code, for j < width; keep the bits inside each code's length
    positions = np.arange(width)
    shifts = symbol_lengths[:, None] - 1 - positions
    bits = (symbol_codes[:, None] >> np.maximum(shifts, 0)) & 1
    return np.packbits(bits[shifts >= 0].astype(np.uint8)).tobytes()


def decode(stream: bytes, lengths: Sequence[int], count: int) -> np.ndarray:
    """The `count` symbols `encode` wrote; ValueError if the stream is too short or holds an invalid code."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    width = max(lengths, default=0)
    if width == 0:
        raise ValueError("a Huffman table without codes cannot decode symbols")
    if width > MAX_CODE_LENGTH:
        raise ValueError(f"a Huffman code of {width} bits is longer than the {MAX_CODE_LENGTH} this format allows")
    symbol_at, length_at = _decoding_table(lengths, width)
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8)).astype(np.int64)
    bits = np.concatenate([bits, np.zeros(width, dtype=np.int64)])  # a window may look past the last code
    # the `width`-bit window starting at every bit position, then what code starts there
    windows = np.zeros(len(bits) - width, dtype=np.int64)
    for offset in range(width):
        windows = (windows << 1) | bits[offset : offset + len(windows)]
    starts_symbol, starts_length = symbol_at[windows].tolist(), length_at[windows].tolist()
    end, symbols, position = len(bits) - width, [0] * count, 0
    for index in range(count):  # following the codes is sequential; every lookup above was vectorised
        if position >= end or starts_length[position] == 0:
            raise ValueError("the Huffman stream ends early or holds an invalid code")
        symbols[index] = starts_symbol[position]
        position += starts_length[position]
    if position > end:
        raise ValueError("the Huffman stream ends in the middle of a code")
    return np.asarray(symbols, dtype=np.int64)


def _decoding_table(lengths: Sequence[int], width: int) -> tuple[np.ndarray, np.ndarray]:
    """For every `width`-bit window: the symbol whose code begins it and that code's length (0: no code)."""
    symbol_at = np.zeros(1 << width, dtype=np.int64)
    length_at = np.zeros(1 << width, dtype=np.int64)
    for symbol, (code, length) in enumerate(zip(canonical_codes(lengths), lengths, strict=True)):
        if length:
            first = code << (width - length)
            symbol_at[first : first + (1 << (width - length))] = symbol
            length_at[first : first + (1 << (width - length))] = length
    return symbol_at, length_at
