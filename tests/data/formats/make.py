"""Regenerates the stored files that tests/test_independent_reader.py reads: one small hand-made state_dict written
by the current writer (`pruning_cli.sparse.compact_file.write_compact`) in every format and version, each beside a
`.pt` of the exact weights it must decode to. A reader that stops decoding these files exactly has changed the
format, so run this only for a deliberate format change (with a new version number), then commit what it writes:

    python tests/data/formats/make.py

Writes v1_compact.bin (version 1, `--format compact`), v2_quantized.bin and v2_deep.bin (version 2), and a .pt of
the same name for each. The layers cover 8-bit gaps (a 4-D kernel) and 5-bit ones, fillers in both, lines by rows
and by columns, fixed-width indices of 1, 2 and 5 bits, skewed index frequencies, one-symbol Huffman tables and
a layer with no weight left.
"""

from pathlib import Path

import torch

from pruning_cli.sparse.compact_file import write_compact

HERE = Path(__file__).resolve().parent
MODEL = "handmade"
SHARED_VALUES = {"conv.weight": 40, "fc1.weight": 31, "fc2.weight": 3, "fc3.weight": 1}  # per prunable weight


def pruned(shape: tuple[int, ...], kept: float, generator: torch.Generator) -> torch.Tensor:
    """A random weight keeping about `kept` of its entries, zero elsewhere."""
    weight = torch.randn(shape, generator=generator)
    return weight * (torch.rand(shape, generator=generator) < kept)


def build_state() -> dict[str, torch.Tensor]:
    """The unquantized state_dict: zero runs longer than the gaps reach (fillers) in conv (8-bit gaps) and fc1
    (5-bit), fc1 tall enough to be stored by columns, a dense fc3 (every gap 0) and an all-zero layer (no entries)."""
    generator = torch.Generator().manual_seed(20150608)
    conv, fc1 = pruned((8, 16, 5, 5), 0.03, generator), pruned((120, 30), 0.2, generator)
    conv[:4, :12] = 0  # 300 zeros at the start of four kernels' lines
    fc1[10:80, :5] = 0  # 70 zeros down five columns
    return {
        "conv.weight": conv,
        "conv.bias": torch.randn(8, generator=generator),
        "fc1.weight": fc1,
        "fc1.bias": torch.randn(120, generator=generator),
        "fc2.weight": pruned((10, 120), 0.3, generator),
        "fc3.weight": torch.randn((3, 4), generator=generator),
        "empty.weight": torch.zeros(4, 5),
    }


def quantized(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each prunable weight's kept entries drawn from SHARED_VALUES[key] shared values with skewed frequencies
    (1, 1/2, 1/3, ...), as k-means quantization leaves a layer."""
    generator = torch.Generator().manual_seed(4)
    result = dict(state)
    for key, size in SHARED_VALUES.items():
        weight = state[key].clone()
        codebook = torch.randn(size, generator=generator).sort().values
        frequencies = 1 / torch.arange(1, size + 1, dtype=torch.float64)
        kept = weight != 0
        weight[kept] = codebook[torch.multinomial(frequencies, int(kept.sum()), True, generator=generator)]
        result[key] = weight
    return result


def write(name: str, state: dict[str, torch.Tensor], encoding: str) -> None:
    """`name`.bin in `encoding` (the prunable weights; the rest dense) and `name`.pt with its exact weights."""
    compact_keys = {key for key in state if key.endswith(".weight")}
    write_compact(HERE / f"{name}.bin", MODEL, state, compact_keys, encoding)
    torch.save(state, HERE / f"{name}.pt")


def main() -> None:
    """Write the three files and their expected weights."""
    state = build_state()
    write("v1_compact", state, "compact")
    write("v2_quantized", quantized(state), "quantized")
    write("v2_deep", quantized(state), "deep")


if __name__ == "__main__":
    main()
