"""Sparse storage and inference: exact round trips, the paper's k-bit relative indices, dead units, the CLI."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pruning_cli.models import get_model_spec
from pruning_cli.models.registry import custom_spec
from pruning_cli.paper import PAPER_KEPT
from pruning_cli.pruning.masks import top_fraction_mask
from pruning_cli.pruning.stats import dead_units
from pruning_cli.quantize.kmeans import quantize_layer
from pruning_cli.records.contract import RUN_RECORD
from pruning_cli.sparse import huffman
from pruning_cli.sparse.cli import run
from pruning_cli.sparse.compact_file import read_compact, write_compact
from pruning_cli.sparse.export import (
    Link,
    build_dense_model,
    export_state_dict,
    exported_state_dict,
    links,
    load_export,
    model_from_state,
    remove_dead_hidden_units,
)
from pruning_cli.sparse.formats import (
    compact_bytes,
    csr_bytes,
    decode_compact,
    decode_csr,
    encode_compact,
    encode_csr,
    unpack_bits,
)
from pruning_cli.sparse.model import SparseLinear, build_sparse_model, sparse_model_from_state

KEPT = {model: {layer: percent / 100 for layer, percent in layers.items()} for model, layers in PAPER_KEPT.items()}


def pruned_model(name: str, kept: dict[str, float] | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised model whose prunable layers keep their largest `kept` fraction (default: paper's)."""
    torch.manual_seed(seed)
    spec = get_model_spec(name)
    model = spec.build(10).eval()
    with torch.no_grad():
        for layer, path in spec.layers.items():
            weight = model.get_submodule(path).weight
            weight.mul_(top_fraction_mask(weight, (kept or KEPT[name])[layer])[0])
    return model


def images(batch: int = 16) -> torch.Tensor:
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))


# --- formats -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(300, 784), (50, 20, 5, 5), (3, 1), (0, 4)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.6, 1.0])
def test_csr_and_compact_decode_exactly(shape, density):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(shape, generator=generator) * (torch.rand(shape, generator=generator) < density)
    assert torch.equal(decode_csr(encode_csr(weight)), weight)
    assert torch.equal(decode_compact(encode_compact(weight)), weight)
    assert torch.equal(decode_compact(encode_compact(weight, bits=2)), weight)  # many fillers
    for by_columns in (False, True):
        assert torch.equal(decode_compact(encode_compact(weight, by_columns=by_columns)), weight)


def test_csr_picks_the_smallest_index_dtypes():
    small, wide = encode_csr(torch.eye(200)), encode_csr(torch.eye(300))
    assert small["col_indices"].dtype == torch.uint8 and small["crow_indices"].dtype == torch.uint8
    assert wide["col_indices"].dtype == torch.int16 and wide["crow_indices"].dtype == torch.int16
    assert csr_bytes(small) == 200 * 4 + 200 * 1 + 201 * 1


def test_compact_inserts_fillers_for_runs_over_31_zeros_on_a_hand_made_matrix():
    weight = torch.zeros(2, 40)
    weight[0, [0, 1, 35]] = torch.tensor([1.0, 2.0, 3.0])  # zeros skipped 0, 0, 33 -> 31, filler, 1
    weight[1, 39] = 4.0  # 39 zeros -> 31, filler, 7
    compact = encode_compact(weight)

    assert compact["bits"] == 5 and compact["count"] == 6
    assert unpack_bits(compact["gaps"], 5, 6).tolist() == [0, 0, 31, 1, 31, 7]
    assert compact["values"].tolist() == [1.0, 2.0, 0.0, 3.0, 0.0, 4.0]
    assert compact["crow_indices"].tolist() == [0, 4, 6]
    # 6 float32 values + ceil(6 * 5 / 8) = 4 bytes of gaps + 3 uint8 row pointers
    assert compact_bytes(compact) == 24 + 4 + 3
    assert csr_bytes(encode_csr(weight)) == 16 + 4 + 3  # 4 values, 4 uint8 columns, 3 uint8 row pointers
    assert torch.equal(decode_compact(compact), weight)


def test_compact_stores_by_columns_when_whole_columns_are_pruned():
    # An fc1 fed by images: the border pixels' columns are pruned away, so every row starts with a long run of zeros.
    weight = torch.zeros(300, 100)
    weight[:, 60:70] = torch.randn(300, 10)
    by_rows, best = encode_compact(weight, by_columns=False), encode_compact(weight)
    assert by_rows["count"] == 3_300  # one filler per row for the leading 60 zeros
    assert compact_bytes(by_rows) == 3_300 * 4 + 2_063 + 301 * 2  # values, ceil(3300 * 5 / 8) gap bytes, pointers
    assert best["by_columns"] and best["count"] == 3_000  # empty columns cost one pointer each, no filler
    assert compact_bytes(best) == 3_000 * 4 + 1_875 + 101 * 2
    assert torch.equal(decode_compact(best), weight)


@pytest.mark.parametrize(("column", "gaps"), [(31, [31]), (32, [31, 0]), (63, [31, 31]), (64, [31, 31, 0])])
def test_compact_filler_boundaries(column, gaps):
    weight = torch.zeros(1, 65)
    weight[0, column] = 1.0
    compact = encode_compact(weight, by_columns=False)
    assert unpack_bits(compact["gaps"], 5, compact["count"]).tolist() == gaps
    assert torch.equal(decode_compact(compact), weight)


def test_conv_kernels_use_8_bit_gaps_over_the_flattened_filter():
    kernel = torch.zeros(2, 20, 4, 4)  # rows of 320 columns
    kernel[1].view(-1)[300] = -2.0  # 300 zeros -> 255, filler, 44
    compact = encode_compact(kernel, by_columns=False)
    assert compact["bits"] == 8 and compact["gaps"].tolist() == [255, 44]
    assert compact_bytes(compact) == 2 * 4 + 2 + 3
    assert torch.equal(decode_compact(compact), kernel)


def test_dead_units_of_fc_and_conv():
    weight = torch.ones(4, 3)
    weight[:, 1] = 0
    weight[2] = 0
    dead_inputs, dead_outputs = dead_units(weight)
    assert dead_inputs.tolist() == [False, True, False] and dead_outputs.tolist() == [False, False, True, False]
    kernel = torch.ones(5, 3, 2, 2)
    kernel[:, 0] = 0
    kernel[4] = 0
    dead_inputs, dead_outputs = dead_units(kernel)
    assert dead_inputs.tolist() == [True, False, False] and dead_outputs.tolist() == [False] * 4 + [True]


# --- export and sparse inference -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_export_file_round_trip_is_exact(name, tmp_path):
    state = pruned_model(name).state_dict()
    exported, _ = export_state_dict(state, name)
    torch.save(exported, tmp_path / "model_sparse.pt")
    loaded = load_export(tmp_path / "model_sparse.pt")  # weights_only=True
    restored = exported_state_dict(loaded)
    assert restored.keys() == state.keys()
    assert all(torch.equal(restored[key], state[key]) for key in state)


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_sparse_model_outputs_equal_dense_outputs(name):
    model = pruned_model(name)
    exported, _ = export_state_dict(model.state_dict(), name)
    sparse = build_sparse_model(exported)
    assert any(isinstance(module, SparseLinear) for module in sparse.modules())
    with torch.inference_mode():
        expected = model(images())
        torch.testing.assert_close(sparse(images()), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sparse_model_from_state(model.state_dict(), name)(images(1)), model(images(1)))


def test_dead_unit_removal_folds_constants_cascades_and_keeps_outputs():
    torch.manual_seed(0)
    model = get_model_spec("lenet300").build(10).eval()
    with torch.no_grad():
        model.fc1.weight[:10] = 0  # 10 hidden units without inputs ...
        model.fc1.bias[:10] = 0.5  # ... that still feed relu(0.5) to fc2: must be folded into fc2's bias
        model.fc2.weight[:, 10:15] = 0  # 5 without outputs
        model.fc3.weight[:, :3] = 0  # fc2 units 0-2 without outputs ...
        model.fc2.weight[3:, 20] = 0  # ... and fc1 unit 20 feeds only them: dead once they are gone
    exported, report = export_state_dict(model.state_dict(), "lenet300", remove_dead=True)

    assert exported["removed_units"] == {"fc1": 16, "fc2": 3}
    shapes = {name: layer["shape"] for name, layer in exported["layers"].items()}
    assert shapes == {"fc1": (284, 784), "fc2": (97, 284), "fc3": (10, 97)}
    assert report.set_index("layer").loc["fc2", ["removed_inputs", "removed_outputs"]].tolist() == [16, 3]
    with torch.inference_mode():
        expected = model(images())
        torch.testing.assert_close(build_dense_model(exported)(images()), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(build_sparse_model(exported)(images()), expected, rtol=1e-5, atol=1e-5)


def test_dead_unit_removal_on_lenet5_at_paper_densities():
    model = pruned_model("lenet5")
    exported, _ = export_state_dict(model.state_dict(), "lenet5", remove_dead=True)
    removed = exported["removed_units"]["fc1"]
    assert removed > 0  # fc2 keeps 19% of 10 outputs per unit: ~12% of fc1's units have no output left
    channels = 50 - exported["removed_units"]["conv2"]
    assert exported["layers"]["fc1"]["shape"] == (500 - removed, channels * 16)
    with torch.inference_mode():
        torch.testing.assert_close(build_sparse_model(exported)(images()), model(images()), rtol=1e-5, atol=1e-5)


def test_dead_conv_channels_are_removed_and_their_constants_folded():
    torch.manual_seed(0)
    model = get_model_spec("lenet5").build(10).eval()
    with torch.no_grad():
        model.conv1.weight[3] = 0  # a filter without inputs: relu(0.5) everywhere, folded into conv2's bias
        model.conv1.bias[3] = 0.5
        model.conv2.weight[7] = 0  # conv2 channel 7 without inputs and a negative bias: outputs 0
        model.conv2.bias[7] = -1.0
        model.fc1.weight[:, 16 * 9 : 16 * 10] = 0  # conv2 channel 9 feeds none of fc1's 800 columns
    exported, report = export_state_dict(model.state_dict(), "lenet5", remove_dead=True)

    assert exported["removed_units"] == {"conv1": 1, "conv2": 2, "fc1": 0}
    shapes = {name: layer["shape"] for name, layer in exported["layers"].items()}
    assert shapes == {"conv1": (19, 1, 5, 5), "conv2": (48, 19, 5, 5), "fc1": (500, 768), "fc2": (10, 500)}
    assert report.set_index("layer").loc["fc1", ["removed_inputs", "removed_outputs"]].tolist() == [32, 0]
    with torch.inference_mode():
        expected = model(images())
        torch.testing.assert_close(build_sparse_model(exported)(images()), expected, rtol=1e-5, atol=1e-5)


def test_zero_padding_keeps_input_less_channels_with_a_constant():
    # With zero padding the next conv sees the constant inside and zeros at the border: no exact fold.
    weights = {"a": torch.zeros(3, 2, 3, 3), "b": torch.ones(4, 3, 3, 3)}
    weights["a"][2] = 1.0
    biases = {"a": torch.tensor([1.0, -1.0, 0.0]), "b": torch.zeros(4)}
    new_weights, _, removed = remove_dead_hidden_units(weights, biases, [Link("a", "b", foldable=False)])
    assert removed == {"a": 1}  # channel 1 outputs relu(-1) = 0 and goes; channel 0 outputs 1 and stays
    assert new_weights["b"].shape == (4, 2, 3, 3)


def test_links_of_alexnet_fold_only_where_there_is_no_padding():
    spec = get_model_spec("alexnet")
    with torch.device("meta"):
        chain = links(spec.prunable(spec.build(1000)))
    assert [(link.first, link.second, link.foldable) for link in chain] == [
        ("conv1", "conv2", False),
        ("conv2", "conv3", False),
        ("conv3", "conv4", False),
        ("conv4", "conv5", False),
        ("conv5", "fc6", True),
        ("fc6", "fc7", True),
        ("fc7", "fc8", True),
    ]


@pytest.mark.slow  # a whole AlexNet, exported and run on 224 x 224 images
def test_dead_channels_of_alexnet_go_through_padding_and_the_flatten_to_fc6():
    torch.manual_seed(0)
    model = get_model_spec("alexnet").build(10).eval()
    conv3, conv4, conv5, fc6, fc7 = (model.features[6], model.features[8], model.features[10]) + (
        model.classifier[1], model.classifier[4],
    )  # fmt: skip
    with torch.no_grad():
        for fc in (fc6, fc7):  # 1% kept at random: each unit keeps 40-90 links, and the export has little to encode
            fc.weight.mul_(torch.rand(fc.weight.shape) < 0.01)
        conv3.weight[20], conv3.bias[20] = 0, 0.5  # no input, a constant into a zero-padded conv4: must stay
        conv4.weight[:, 11] = 0  # conv3 channel 11 feeds nothing: goes
        conv5.weight[5], conv5.bias[5] = 0, 0.3  # a constant through avgpool + flatten: folded into fc6's bias
        fc6.weight[:, 36 * 7 : 36 * 8] = 0  # conv5 channel 7 (its 6x6 positions) feeds nothing: goes
        fc7.weight[:, 100] = 0  # fc6 unit 100 feeds nothing: goes
    exported, _ = export_state_dict(model.state_dict(), "alexnet", remove_dead=True)
    assert {name: count for name, count in exported["removed_units"].items() if count} == {
        "conv3": 1, "conv5": 2, "fc6": 1,
    }  # fmt: skip
    assert exported["layers"]["fc6"]["shape"] == (4095, 36 * 254)
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(build_sparse_model(exported)(images), model(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module", ["Scaled", "Offset", "Tied"])
def test_a_model_rebuilt_from_its_state_keeps_what_its_state_dict_does_not_hold(module):
    """A buffer left out of the state_dict (Scaled), a plain tensor attribute (Offset), a weight two layers share
    (Tied): the rebuilt model computes what the original does, and a shared weight stays one tensor."""
    spec = custom_spec(f"own_nets.{module}", None, (1, 28, 28))
    model, images = spec.build(10).eval(), torch.randn(2, 1, 28, 28)
    rebuilt = model_from_state(f"own_nets.{module}", model.state_dict(), spec)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(images), model(images), rtol=0, atol=0)
    if module == "Tied":
        assert rebuilt.twin.weight is rebuilt.inner.weight


def test_removal_keeps_units_whose_constant_has_no_bias_to_go_to():
    weights = {"a": torch.zeros(2, 3), "b": torch.ones(4, 2)}
    _, _, removed = remove_dead_hidden_units(
        weights, {"a": torch.tensor([1.0, -1.0]), "b": None}, [Link("a", "b", foldable=True)]
    )
    assert removed == {"a": 1}  # unit 1 outputs relu(-1) = 0 and goes; unit 0 outputs 1 and stays


def test_lenet300_at_paper_densities_compact_storage_ratio():
    _, report = export_state_dict(pruned_model("lenet300").state_dict(), "lenet300")
    total = report.set_index("layer").loc["total"]
    assert total["nonzero"] == 22_186  # Table 1: 267K -> 22K parameters (biases included)
    # 32-bit values + 5-bit gaps can give at most 12.0x * 32 / 37 = 10.4x; random (unstructured) positions at 8%
    # need a filler for ~8% of fc1's entries, which lands at ~9.6x. CSR with int16 columns stays near 8x.
    assert total["compact_ratio"] > 9.5
    assert total["compact_ratio"] > total["csr_ratio"] > 7.5


# --- prune-export --------------------------------------------------------------------------------------------


def write_run(run_dir: Path, name: str = "lenet300") -> dict[str, torch.Tensor]:
    run_dir.mkdir(parents=True)
    (run_dir / RUN_RECORD).write_text(json.dumps({"format": 1, "config": {"seed": 0, "model": {"name": name}}}))
    state = pruned_model(name).state_dict()
    torch.save(state, run_dir / "model.pt")
    return state


def prune_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pruning_cli.sparse.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_cli_exports_a_run_directory(tmp_path):
    state = write_run(tmp_path / "run", "lenet5")
    result = prune_export(str(tmp_path / "run"), "--keep-dead")  # same shapes, so the weights compare exactly
    assert result.returncode == 0, result.stderr
    assert "compact_ratio" in result.stdout and f"wrote {tmp_path / 'run' / 'model_sparse.pt'}" in result.stdout
    restored = exported_state_dict(load_export(tmp_path / "run" / "model_sparse.pt"))
    assert all(torch.equal(restored[key], state[key]) for key in state)


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (
            "none",
            ["--model", "resnet5000"],
            "unknown model 'resnet5000'; choose one of lenet300, lenet5, alexnet, vgg16 or a torchvision classifier "
            "with --model",
        ),
        ("no_model", [], "model.pt does not exist"),
        ("no_config", [], "no run.json (a run of a version before run.json, or one that never started), so the model"),
        ("run", ["--model", "lenet5"], "model.pt does not fit model lenet5: missing keys conv1.bias"),
        ("garbage", [], "model.pt cannot be read"),
    ],
)
def test_cli_bad_inputs_in_process(tmp_path, capsys, setup, args, message):
    run_dir = tmp_path / "run"
    if setup in ("none", "run", "no_config"):
        write_run(run_dir)
    if setup == "no_config":
        (run_dir / RUN_RECORD).unlink()
    if setup in ("no_model", "garbage"):
        run_dir.mkdir()
        (run_dir / RUN_RECORD).write_text(json.dumps({"config": {"model": {"name": "lenet300"}}}))
    if setup == "garbage":
        (run_dir / "model.pt").write_bytes(b"not a torch file")
    assert run([str(run_dir), *args]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("prune-export: error: ") and message in stderr and stderr.count("\n") == 1


def test_cli_removes_dead_units_unless_told_to_keep_them(tmp_path, capsys):
    write_run(tmp_path / "run", "lenet5")
    assert run([str(tmp_path / "run"), "--model", "lenet5"]) == 0
    exported = load_export(tmp_path / "run" / "model_sparse.pt")
    assert exported["layers"]["fc1"]["shape"][0] < 500
    assert "removed_outputs" in capsys.readouterr().out
    assert run([str(tmp_path / "run"), "--keep-dead"]) == 0
    exported = load_export(tmp_path / "run" / "model_sparse.pt")
    assert exported["layers"]["fc1"]["shape"] == (500, 800) and exported["removed_units"] == {}


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("remove_dead", [False, True])
def test_the_compact_file_reads_back_exactly(name, remove_dead, tmp_path):
    state = pruned_model(name).state_dict()
    exported, report = export_state_dict(state, name, remove_dead=remove_dead)
    expected = exported_state_dict(exported)
    layer_keys = {f"{layer['module']}.weight" for layer in exported["layers"].values()}
    size = write_compact(tmp_path / "model.bin", name, expected, layer_keys)["total"]
    model, restored = read_compact(tmp_path / "model.bin")
    assert model == name and list(restored) == list(expected)
    assert all(torch.equal(restored[key], expected[key]) for key in expected)
    if not remove_dead:
        assert all(torch.equal(restored[key], state[key]) for key in state)  # model.pt's weights, exactly
    compact = int(report.set_index("layer").compact_bytes["total"])
    # the paper's bytes (pointers at the smallest unsigned width, a little below the estimate) plus names and shapes
    assert 0.99 * compact <= size <= compact + 400
    with torch.inference_mode():
        logits = model_from_state(name, restored)(images())
        torch.testing.assert_close(logits, build_dense_model(exported)(images()), rtol=0, atol=0)


def test_the_compact_file_keeps_gaps_longer_than_its_index_width(tmp_path):
    fc = torch.zeros(3, 200)
    fc[0, [0, 40, 199]] = torch.tensor([1.0, -2.0, 3.0])  # gaps of 39 and 158 zeros: fillers at 5 bits
    fc[2, 150] = 0.5
    conv = torch.zeros(2, 3, 10, 10)
    conv[1, 2, 9, 9], conv[0, 0, 0, 1] = 4.0, -1.0  # 298 zeros before the last: fillers at 8 bits
    state = {"fc.weight": fc, "fc.bias": torch.tensor([0.1, 0.2, 0.3]), "conv.weight": conv}
    write_compact(tmp_path / "m.bin", "handmade", state, {"fc.weight", "conv.weight"})
    _, restored = read_compact(tmp_path / "m.bin")
    assert all(torch.equal(restored[key], state[key]) for key in state)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-100], "damaged or truncated"),
        (lambda data: data[:40] + bytes([data[40] ^ 1]) + data[41:], "damaged or truncated"),
        (lambda data: b"XXXX" + data[4:], "not a compact model file"),
    ],
)
def test_a_damaged_or_truncated_compact_file_is_refused_in_one_line(tmp_path, damage, message):
    state = pruned_model("lenet300").state_dict()
    write_compact(tmp_path / "m.bin", "lenet300", state, {"fc1.weight", "fc2.weight", "fc3.weight"})
    (tmp_path / "m.bin").write_bytes(damage((tmp_path / "m.bin").read_bytes()))
    with pytest.raises(ValueError, match=message) as refused:
        read_compact(tmp_path / "m.bin")
    assert "\n" not in str(refused.value)


def test_cli_writes_the_compact_file_and_its_true_size(tmp_path, capsys):
    state = write_run(tmp_path / "run", "lenet300")
    assert run([str(tmp_path / "run"), "--format", "compact", "--keep-dead"]) == 0
    path = tmp_path / "run" / "model_compact.bin"
    printed = capsys.readouterr().out
    assert f"wrote {path}: {path.stat().st_size:,} bytes" in printed
    _, restored = read_compact(path)
    assert all(torch.equal(restored[key], state[key]) for key in state)


# --- Huffman coding and the quantized files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "frequencies",
    [[1000, 300, 100, 30, 10, 3, 1, 1], [5], [0, 7, 0, 0], [1] * 256, [2**40, *[1] * 30], [0, 3, 3]],
)
def test_huffman_round_trips_and_gives_frequent_symbols_short_codes(frequencies):
    symbols = np.repeat(np.arange(len(frequencies)), [min(count, 5000) for count in frequencies])
    np.random.default_rng(0).shuffle(symbols)
    lengths = huffman.code_lengths(frequencies)
    assert max(lengths) <= huffman.MAX_CODE_LENGTH
    assert sum(2.0**-length for length in lengths if length) <= 1  # Kraft: a prefix code
    assert all(bool(length) == bool(count) for length, count in zip(lengths, frequencies, strict=True))
    for more, fewer in itertools.permutations(range(len(frequencies)), 2):
        if frequencies[more] > frequencies[fewer] > 0:
            assert lengths[more] <= lengths[fewer]
    stream = huffman.encode(symbols, lengths)
    assert len(stream) == -(-sum(lengths[symbol] for symbol in symbols) // 8)
    np.testing.assert_array_equal(huffman.decode(stream, lengths, len(symbols)), symbols)


def test_huffman_skewed_frequencies_beat_fixed_width_codes():
    symbols = np.minimum(np.random.default_rng(0).geometric(0.4, 20_000) - 1, 31)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=32))
    assert lengths[0] < lengths[10] and len(huffman.encode(symbols, lengths)) < 0.6 * len(symbols) * 5 / 8


def test_a_huffman_stream_that_ends_early_or_a_table_too_deep_is_refused():
    lengths = huffman.code_lengths([10, 5, 1])
    stream = huffman.encode(np.array([0, 1, 2] * 20), lengths)
    with pytest.raises(ValueError, match="ends early"):
        huffman.decode(stream[:3], lengths, 60)
    with pytest.raises(ValueError, match="a Huffman code of 40 bits is longer than the 16"):
        huffman.decode(b"\x00", [40, 1], 1)  # a crafted table: refused, not a 2^40-entry decoding table


def quantized_state(name: str) -> dict[str, torch.Tensor]:
    """A pruned model whose prunable weights share a few values per layer, as quantize=kmeans leaves them."""
    model, spec = pruned_model(name), get_model_spec(name)
    with torch.no_grad():
        for path in spec.layers.values():
            weight = model.get_submodule(path).weight
            bits = 8 if weight.dim() > 2 else 5
            weight.copy_(quantize_layer(weight, weight != 0, bits).weight())
    return model.state_dict()


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("encoding", ["quantized", "deep"])
def test_the_quantized_files_read_back_the_quantized_model_exactly(name, encoding, tmp_path):
    state = quantized_state(name)
    keys = {f"{path}.weight" for path in get_model_spec(name).layers.values()}
    sizes = write_compact(tmp_path / "m.bin", name, state, keys, encoding)
    assert sizes["total"] == (tmp_path / "m.bin").stat().st_size
    model, restored = read_compact(tmp_path / "m.bin")
    assert model == name and all(torch.equal(restored[key], state[key]) for key in state)
    with torch.inference_mode():
        expected = model_from_state(name, state)(images())
        torch.testing.assert_close(model_from_state(name, restored)(images()), expected, rtol=0, atol=0)
    compact = write_compact(tmp_path / "c.bin", name, state, keys)
    assert sizes["total"] < compact["total"] / 3  # 4-byte values became 5- or 8-bit indices
    # version 2 where quantized entries are; a compact-only file stays version 1 for readers of that layout
    assert (tmp_path / "m.bin").read_bytes()[4] == 2 and (tmp_path / "c.bin").read_bytes()[4] == 1


def test_the_quantized_files_keep_gaps_longer_than_their_index_width(tmp_path):
    fc = torch.zeros(3, 200)
    fc[0, [0, 40, 199]] = torch.tensor([1.0, -2.0, 1.0])  # fillers at 5 bits
    fc[2, 150] = -2.0
    conv = torch.zeros(2, 3, 10, 10)
    conv[1, 2, 9, 9], conv[0, 0, 0, 1] = 4.0, 4.0  # fillers at 8 bits
    state = {"fc.weight": fc, "fc.bias": torch.tensor([0.1, 0.2, 0.3]), "conv.weight": conv}
    for encoding in ("quantized", "deep"):
        write_compact(tmp_path / "m.bin", "handmade", state, {"fc.weight", "conv.weight"}, encoding)
        _, restored = read_compact(tmp_path / "m.bin")
        assert all(torch.equal(restored[key], state[key]) for key in state)


def test_a_layer_with_too_many_distinct_values_is_refused_for_the_quantized_files(tmp_path):
    state = pruned_model("lenet300").state_dict()
    with pytest.raises(ValueError, match="fc1.weight has .* distinct weights; a quantized file holds at most 255"):
        write_compact(tmp_path / "m.bin", "lenet300", state, {"fc1.weight"}, "deep")


@pytest.mark.parametrize("offset", [-100, 60, 2000])
def test_a_damaged_deep_file_is_refused_in_one_line(tmp_path, offset):
    state = quantized_state("lenet300")
    write_compact(tmp_path / "m.bin", "lenet300", state, {"fc1.weight", "fc2.weight", "fc3.weight"}, "deep")
    data = (tmp_path / "m.bin").read_bytes()
    damaged = data[:offset] if offset < 0 else data[:offset] + bytes([data[offset] ^ 0x10]) + data[offset + 1 :]
    (tmp_path / "m.bin").write_bytes(damaged)
    with pytest.raises(ValueError, match="damaged or truncated") as refused:
        read_compact(tmp_path / "m.bin")
    assert "\n" not in str(refused.value)


def test_cli_writes_every_format_and_prints_the_sizes_of_the_files(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_run(run_dir, "lenet300")
    state = quantized_state("lenet300")
    torch.save(state, run_dir / "model.pt")
    assert run([str(run_dir), "--format", "all", "--keep-dead"]) == 0
    printed = capsys.readouterr().out
    for file_name in ("model_sparse.pt", "model_compact.bin", "model_quantized.bin", "model_deep.bin"):
        size = (run_dir / file_name).stat().st_size
        assert f"wrote {run_dir / file_name}: {size:,} bytes" in printed
    total = printed.splitlines()[[line.split()[0] for line in printed.splitlines()].index("total")]
    assert total.split()[-1] == f"{(run_dir / 'model_deep.bin').stat().st_size:,}"
    _, restored = read_compact(run_dir / "model_deep.bin")
    assert all(torch.equal(restored[key], state[key]) for key in state)


def test_cli_refuses_a_quantized_format_for_a_model_that_is_not_quantized(tmp_path, capsys):
    write_run(tmp_path / "run", "lenet300")
    assert run([str(tmp_path / "run"), "--format", "deep"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"prune-export: error: {tmp_path / 'run' / 'model.pt'} is not quantized: layer fc1 has")
    assert error.endswith("run prune-run with quantize=kmeans first") and "\n" not in error
    assert not (tmp_path / "run" / "model_deep.bin").exists()
