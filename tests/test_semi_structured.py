"""`prune-export --format semi_structured`: the 2:4 layers of a pruning.pattern=2:4 run, compressed as the sparse
tensor cores take them, decoding exactly; on a CUDA GPU they run through torch's semi-structured kernels."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from runs import SMOKE, run_in_process

from pruning_cli.pruning.nm_sparsity import n_of_m_mask
from pruning_cli.sparse.cli import run
from pruning_cli.sparse.export import model_from_state
from pruning_cli.sparse.semi_structured import (
    decode_two_four,
    encode_two_four,
    is_two_four,
    load_semi_structured,
    semi_structured_model,
    semi_structured_state,
    to_semi_structured,
)

MOBILENET = ["model=torchvision", "model.arch=mobilenet_v3_small", "dataset=synthetic", "dataset.num_train=32",
             "dataset.num_test=16", "model.input_shape=[3,32,32]", "train.epochs=1", "retrain.epochs=1",
             "pruning.iterations=1", "train.batch_size=16", "retrain.batch_size=16"]  # fmt: skip
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # the benchmark scripts
CLASSIFIER = "classifier.0"  # mobilenet_v3_small's Linear(576, 1024): a weight of 1024 x 576, a shape the kernels take


def two_four_weight(rows: int = 64, columns: int = 128, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator)
    thresholded = torch.rand(rows, columns, generator=generator) > 0.5  # groups of 0 to 4 survivors before 2:4
    return weight * n_of_m_mask(weight, thresholded, 2, 4)


def independent_decode(layer: dict) -> np.ndarray:
    """The dense weight from the format as semi_structured's docstring describes it, in numpy."""
    rows, columns = layer["shape"]
    packed = layer["positions"].numpy()
    slots = np.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], axis=1).reshape(-1)
    values = layer["values"].numpy().reshape(-1)
    dense = np.zeros(rows * columns, dtype=np.float32)
    groups = np.repeat(np.arange(rows * columns // 4), 2)
    dense[groups * 4 + slots[: len(values)]] = values
    return dense.reshape(rows, columns)


def test_a_hand_made_row_stores_its_kept_values_and_their_2_bit_positions():
    row = torch.tensor([[0.0, 3.0, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    layer = encode_two_four(row.repeat(32, 4))  # 32 x 64: the smallest shape the kernels take
    assert layer["values"][0, :8].tolist() == [3.0, -2.0, 0.0, 0.0, 5.0, 0.0, 0.0, 1.0]
    # slots (1, 3), (0, 1) | (0, 1), (0, 2), 2 bits each, least significant first: 1 + 3*4 + 0*16 + 1*64 = 77 and
    # 0 + 1*4 + 0*16 + 2*64 = 132; a group's missing non-zeros are its first zeros
    assert layer["positions"][:2].tolist() == [77, 132]
    assert layer["values"].shape == (32, 32) and layer["positions"].numel() == 32 * 64 // 8


@pytest.mark.parametrize("shape", [(32, 64), (64, 128), (96, 192)])
def test_a_2_4_weight_decodes_exactly_with_ours_and_an_independent_reader(shape):
    weight = two_four_weight(*shape)
    layer = encode_two_four(weight)
    assert torch.equal(decode_two_four(layer), weight)
    assert np.array_equal(independent_decode(layer), weight.numpy())
    assert layer["values"].nbytes + layer["positions"].nbytes == weight.nbytes * 17 // 32


def test_a_weight_not_2_4_or_off_the_kernels_shapes_is_refused():
    dense = torch.randn(64, 128)
    assert not is_two_four(dense)
    with pytest.raises(ValueError, match=r"a weight of shape \(64, 128\) is not 2:4 sparse"):
        encode_two_four(dense)
    three = two_four_weight()
    three[5, 8:12] = torch.tensor([1.0, 2.0, 0.0, 3.0])  # one group of 3 non-zeros
    assert not is_two_four(three)
    assert not is_two_four(two_four_weight(1000, 4096)[:1000])  # AlexNet's fc8: 1000 rows
    assert is_two_four(two_four_weight(1024, 4096)) and not is_two_four(torch.zeros(64, 3, 3, 3))


@pytest.fixture(scope="module")
def patterned_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("two_four")
    run_in_process(out_dir, *MOBILENET, "pruning.pattern=2:4", "pruning.sensitivity=0.5")
    return out_dir


def test_the_export_holds_the_2_4_layers_compressed_and_decodes_to_model_pt(patterned_run, capsys):
    assert run([str(patterned_run), "--format", "semi_structured"]) == 0
    printed = capsys.readouterr().out
    path = patterned_run / "model_semi_structured.pt"
    assert f"wrote {path}: " in printed and f"2:4 layers: {CLASSIFIER}" in printed
    payload, expected = load_semi_structured(path), torch.load(patterned_run / "model.pt", weights_only=True)
    assert list(payload["layers"]) == [CLASSIFIER] and payload["model"] == "mobilenet_v3_small"
    state = semi_structured_state(payload)
    assert list(state) == list(expected)
    assert all(state[key].dtype == value.dtype and torch.equal(state[key], value) for key, value in expected.items())
    assert np.array_equal(independent_decode(payload["layers"][CLASSIFIER]), expected[f"{CLASSIFIER}.weight"].numpy())
    model = model_from_state("mobilenet_v3_small", state)  # the CPU's way to the weights: dense
    assert torch.equal(model.get_submodule(CLASSIFIER).weight, expected[f"{CLASSIFIER}.weight"])


def test_on_the_cpu_the_2_4_model_is_refused_with_the_way_to_the_dense_weights(patterned_run):
    if not (patterned_run / "model_semi_structured.pt").exists():
        run([str(patterned_run), "--format", "semi_structured"])
    payload = load_semi_structured(patterned_run / "model_semi_structured.pt")
    with pytest.raises(ValueError, match=r"the 2:4 kernels run on a CUDA GPU, not on cpu; on the CPU load the dense"):
        semi_structured_model(payload, "cpu")
    with pytest.raises(ValueError, match="the 2:4 kernels take torch.float16 or torch.bfloat16 weights, not"):
        semi_structured_model(payload, "cuda", torch.float32)


def test_a_run_without_2_4_layers_is_refused_in_one_line_and_skipped_by_all(tmp_path, capsys):
    # own_nets.Wide: its 64 x 64 layer has a shape the kernels take, but unstructured pruning leaves it not 2:4
    run_in_process(tmp_path, *SMOKE, "model=custom", "model._target_=own_nets.Wide", "pruning.iterations=1")
    assert run([str(tmp_path), "--format", "semi_structured"]) == 2
    error = capsys.readouterr().err
    assert error == (f"prune-export: error: {tmp_path / 'model.pt'} has no layer 2:4 sparse with a shape the 2:4 "
                     "kernels take (a Linear of rows a multiple of 32 and columns a multiple of 64); prune with "
                     "pruning.pattern=2:4\n")  # fmt: skip
    assert run([str(tmp_path), "--format", "all"]) == 0
    assert "skipped model_semi_structured.pt: model.pt has no layer 2:4 sparse" in capsys.readouterr().out
    assert not (tmp_path / "model_semi_structured.pt").exists() and (tmp_path / "model_compact.bin").exists()


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0), reason="needs an Ampere+ GPU"
)
def test_on_a_gpu_the_2_4_layers_run_on_the_sparse_kernels_and_match_the_dense_model(patterned_run):
    if not (patterned_run / "model_semi_structured.pt").exists():
        run([str(patterned_run), "--format", "semi_structured"])
    payload = load_semi_structured(patterned_run / "model_semi_structured.pt")
    sparse = semi_structured_model(payload, "cuda")
    dense = model_from_state(payload["model"], semi_structured_state(payload)).to("cuda", torch.float16)
    assert type(sparse.get_submodule(CLASSIFIER).weight).__name__.startswith("SparseSemiStructuredTensor")
    images = torch.randn(64, 3, 32, 32, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        assert torch.allclose(sparse(images), dense(images), atol=2e-2, rtol=1e-2)


def test_the_2_4_benchmark_hands_the_kernels_2_4_fp16_layers_and_times_every_batch():
    """scripts/bench_sparse.py's GPU table, run on the CPU with the conversion recorded instead of made: so that the
    script a lent GPU runs (scripts/gpu_check.sh) is known to work before device time is spent on it."""
    bench = importlib.import_module("bench_sparse")
    converted = []

    def record(module, paths):
        converted.append((module.get_submodule(paths[0]).weight.dtype, is_two_four(module.weight)))
        return module

    rows = list(bench.two_four_rows(torch.device("cpu"), 1, [("tiny", 128, 64)], record))
    assert converted == [(torch.float16, True)]
    assert [(row["layer"], row["batch"]) for row in rows] == [("tiny", 1), ("tiny", 64), ("tiny", 256)]
    assert all(row["max_abs_diff"] == 0 and row["speedup"] > 0 for row in rows)
    assert [label for label, *_ in bench.TWO_FOUR_LAYERS] == ["AlexNet fc6", "AlexNet fc7", "VGG-16 fc6", "VGG-16 fc7"]


def test_a_linear_subclass_stays_dense_as_fused_attention_reads_its_weight_directly():
    attention = torch.nn.MultiheadAttention(64, 4)  # out_proj: a Linear subclass, read by the fused attention path
    attention.out_proj.weight.data = two_four_weight(64, 64)
    before = attention.out_proj.weight
    assert to_semi_structured(attention, ["out_proj"]).out_proj.weight is before  # not converted, no CUDA asked for
