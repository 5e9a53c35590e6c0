"""The compact, quantized and Huffman-coded files against a second reader written from docs/formats.md alone
(tests/independent_reader.py), and stored files of each format and version that both readers must decode exactly:
a reader that only agrees with its own writer cannot tell a format change from a round trip."""

import zlib
from pathlib import Path

import pytest
import torch
from independent_reader import read_file
from runs import SMOKE, run_in_process

from pruning_cli.sparse.cli import run as export
from pruning_cli.sparse.compact_file import read_compact

STORED = Path(__file__).parent / "data" / "formats"
STORED_FILES = ["v1_compact", "v2_quantized", "v2_deep"]
# A trained and pruned LeNet-5, smaller than SMOKE (the format, not the accuracy, is under test); fc1 keeps 1%: runs
# of zeros far beyond 31, so its 5-bit gaps need fillers; the conv layers get 8-bit gaps.
LENET5 = [
    "model=lenet5", *SMOKE, "train.epochs=1", "dataset.num_train=256", "dataset.num_test=128", "pruning.iterations=1",
    "pruning.kept={conv1:0.5,conv2:0.1,fc1:0.01,fc2:0.2}",
]  # fmt: skip


def exported_run(out_dir: Path, *overrides: str) -> Path:
    """A trained and pruned run, exported in every format that applies with every unit kept (exact weights)."""
    run_in_process(out_dir, *overrides)
    assert export([str(out_dir), "--format", "all", "--keep-dead"]) == 0
    return out_dir


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 pruned, not quantized: its model_compact.bin."""
    return exported_run(tmp_path_factory.mktemp("pruned"), *LENET5)


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 pruned and quantized by k-means: its model_quantized.bin and model_deep.bin."""
    return exported_run(tmp_path_factory.mktemp("quantized"), *LENET5, "quantize=kmeans", "quantize.epochs=1")


def assert_exactly(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same keys in the same order, every tensor equal in dtype, shape and every bit of value."""
    assert list(weights) == list(expected)
    for key, tensor in expected.items():
        assert weights[key].dtype == tensor.dtype and torch.equal(weights[key], tensor), key


def needs_fillers(weight: torch.Tensor, bits: int) -> bool:
    """Whether a run of more than 2^bits - 1 zeros precedes a kept weight both by rows and by columns (so the file
    holds fillers whichever order the writer picks)."""

    def longest(matrix: torch.Tensor) -> int:
        """The longest run of zeros before a kept weight of any line."""
        runs = [torch.diff(line.nonzero().flatten(), prepend=torch.tensor([-1])) - 1 for line in matrix]
        return max((int(run.max()) for run in runs if len(run)), default=0)

    matrix = weight.reshape(weight.shape[0], -1)
    return min(longest(matrix), longest(matrix.T)) > 2**bits - 1


def test_the_compact_file_of_a_pruned_model_decodes_to_its_weights(pruned_run: Path) -> None:
    """Version 1 as docs/formats.md describes it: 8-bit gaps in conv layers, 5-bit ones with fillers in fc layers."""
    assert not (pruned_run / "model_quantized.bin").exists()  # not quantized: --format all writes compact only
    expected = torch.load(pruned_run / "model.pt", weights_only=True)
    assert needs_fillers(expected["fc1.weight"], bits=5)
    assert_exactly(read_file(pruned_run / "model_compact.bin"), expected)


@pytest.mark.parametrize("name", ["model_quantized.bin", "model_deep.bin"])
def test_the_quantized_files_of_a_quantized_model_decode_to_its_weights(quantized_run: Path, name: str) -> None:
    """Version 2 as docs/formats.md describes it: codebook indices, fixed-width or Huffman-coded (canonical codes)."""
    expected = torch.load(quantized_run / "model.pt", weights_only=True)
    assert_exactly(read_file(quantized_run / name), expected)


@pytest.mark.parametrize("name", STORED_FILES)
def test_both_readers_decode_the_stored_files_exactly(name: str) -> None:
    """Files written by an earlier writer still read to their weights: a silent format change fails here."""
    expected = torch.load(STORED / f"{name}.pt", weights_only=True)
    assert_exactly(read_file(STORED / f"{name}.bin"), expected)
    model, state = read_compact(STORED / f"{name}.bin")
    assert model == "handmade"
    assert_exactly(state, expected)


@pytest.mark.parametrize("name", STORED_FILES)
def test_a_flipped_bit_is_refused_by_both_readers(tmp_path: Path, name: str) -> None:
    """The CRC-32 catches a damaged byte before any weight is decoded from it."""
    data = bytearray((STORED / f"{name}.bin").read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged = tmp_path / f"{name}.bin"
    damaged.write_bytes(bytes(data))
    assert zlib.crc32(bytes(data[:-4])) != int.from_bytes(data[-4:], "little")
    with pytest.raises(ValueError, match="CRC-32"):
        read_file(damaged)
    with pytest.raises(ValueError, match="CRC-32"):
        read_compact(damaged)
