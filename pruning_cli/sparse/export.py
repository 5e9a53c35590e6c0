"""Export a pruned state_dict as CSR layers plus the untouched tensors, report its sizes, and load it back.

The export is a plain dict of tensors, ints, strings and tuples, so `torch.load(..., weights_only=True)` reads it:

    {"format": EXPORT_FORMAT, "model": "lenet300",
     "layers": {paper name: {"module": path, "shape", "values", "col_indices", "crow_indices", "bias"}},
     "tensors": {every other state_dict key: tensor},
     "removed_units": {paper name of the layer before the hidden units: count}}

With `remove_dead=True`, hidden units (fc units, conv channels) between consecutive prunable layers that have no
incoming or no outgoing connection are physically removed (paper sec. 3.5), so the exported layers have smaller
dense shapes.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from pruning_cli.models import ModelSpec, get_model_spec
from pruning_cli.pruning.stats import dead_units
from pruning_cli.sparse.compact_file import MAX_SHARED_VALUES, encode_file, write_compact
from pruning_cli.sparse.formats import (
    Csr,
    compact_bytes,
    csr_bytes,
    decode_csr,
    encode_compact,
    encode_csr,
)

EXPORT_FORMAT = "pruning_cli.sparse/1"
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Link:
    """Two consecutive prunable layers whose hidden units (fc units or conv channels) pass only through ReLU,
    pooling, dropout and flatten, as in all four models: a unit of `first` feeds one input column (or channel)
    of `second`, or, where a conv feeds an fc layer through flatten, the block of columns of its positions."""

    first: str
    second: str
    # A constant unit folds exactly into `second`'s bias: true for fc, and for a conv without zero padding
    # (with padding, the border sees zeros instead of the constant).
    foldable: bool


def links(modules: Mapping[str, nn.Module]) -> list[Link]:
    """The links between consecutive prunable modules (paper name -> module, in forward order)."""
    pairs = zip(modules.items(), list(modules.items())[1:], strict=False)
    return [
        Link(first, second, isinstance(module, nn.Linear) or all(pad == 0 for pad in module.padding))
        for (first, _), (second, module) in pairs
    ]


def _per_unit(weight: Tensor, units: int) -> Tensor:
    """`weight` with its input dimension split per unit of the previous layer: (out, units, rest...)."""
    return weight.unflatten(1, (units, -1))


def remove_dead_hidden_units(
    weights: Mapping[str, Tensor], biases: Mapping[str, Tensor | None], chain: list[Link]
) -> tuple[dict[str, Tensor], dict[str, Tensor | None], dict[str, int]]:
    """Drop hidden units with no incoming (a zero row or filter of the first layer) or no outgoing (zero
    columns of the next layer) connection; return new weights, biases and the count removed after each first layer.

    A unit without inputs still outputs relu(bias), a constant: its share, W_next[:, j] summed over the unit's
    columns (or kernel) times relu(b_j), moves into the next layer's bias so that the network computes the same
    function; where that is not exact (no bias to take it, zero padding) the unit stays unless its constant is 0.
    Removing units can leave others dead (a row of the next layer may lose its last input), so passes repeat.
    """
    weights, biases = dict(weights), dict(biases)
    removed = {link.first: 0 for link in chain}
    changed = True
    while changed:
        changed = False
        for link in chain:
            first, second, bias = weights[link.first], weights[link.second], biases[link.first]
            units = first.shape[0]
            second_units = _per_unit(second, units)
            _, no_input = dead_units(first)
            no_output = ~(second_units != 0).transpose(0, 1).flatten(1).any(dim=1)
            constant = torch.zeros(units, dtype=first.dtype) if bias is None else torch.relu(bias.detach())
            constant = torch.where(no_input & ~no_output, constant, 0)
            if biases[link.second] is None or not link.foldable:  # nowhere to fold a constant: keep those units
                no_input &= constant == 0
            dead = no_input | no_output
            if not dead.any():
                continue
            if constant[dead].any():
                share = second_units[:, dead].flatten(2).sum(dim=2) @ constant[dead]
                biases[link.second] = biases[link.second].detach() + share
            keep = ~dead
            weights[link.first] = first[keep]
            biases[link.first] = None if bias is None else bias.detach()[keep]
            weights[link.second] = second_units[:, keep].flatten(1, 2)
            removed[link.first] += int(dead.sum())
            changed = True
    return weights, biases, removed


def export_state_dict(
    state: Mapping[str, Tensor],
    model_name: str,
    remove_dead: bool = False,
    excluded: Sequence[str] = (),
    spec: ModelSpec | None = None,
) -> tuple[dict, pd.DataFrame]:
    """The export payload (see the module docstring) and its size report (`size_report`); the layers `excluded`
    from pruning (pruning.exclude) are stored dense, as the model's other tensors. `spec`: the model's (default:
    the registered or torchvision model `model_name`; a model=custom run's own, from its record)."""
    spec = spec or get_model_spec(model_name)
    spec = spec.without(excluded) if excluded else spec
    layers = spec.layers
    missing = [f"{path}.weight" for path in layers.values() if f"{path}.weight" not in state]
    if missing:
        raise ValueError(f"the state_dict has no {', '.join(missing)}; is it a {model_name} model?")
    original = {name: state[f"{path}.weight"].detach().cpu() for name, path in layers.items()}
    biases = {name: _cpu(state.get(f"{path}.bias")) for name, path in layers.items()}
    weights, removed = dict(original), {}
    if remove_dead and spec.chained:  # a discovered model's layers need not feed each other (residuals, norms)
        with torch.device("meta"):  # only the module types and paddings are needed, not the weights
            modules = spec.prunable(spec.build(10))
        weights, biases, removed = remove_dead_hidden_units(original, biases, links(modules))
    weight_keys = {f"{path}.weight" for path in layers.values()}
    layer_keys = weight_keys | {f"{path}.bias" for path in layers.values()}
    exported = {
        "format": EXPORT_FORMAT,
        "model": model_name,
        "layers": {
            name: {"module": path, **encode_csr(weights[name]), "bias": biases[name]} for name, path in layers.items()
        },
        "tensors": {key: _cpu(value) for key, value in state.items() if key not in layer_keys},
        "removed_units": removed,
        "order": list(state),  # the state_dict's own key order (norm layers sit between the prunable ones)
    }
    dense_rest = sum(value.numel() for key, value in state.items() if key not in weight_keys)
    return exported, size_report(original, exported, dense_rest)


def _cpu(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach().cpu()


def size_report(original: Mapping[str, Tensor], exported: dict, dense_rest: int) -> pd.DataFrame:
    """One row per prunable layer, one for the rest stored dense (biases etc.), and the total.

    dense_bytes is the original model in float32 (`original` weights, `dense_rest` other numbers, before any
    dead-unit removal); csr_bytes what the export file stores; compact_bytes the paper's relative-index storage
    (k-bit gaps incl. fillers) with the rest dense. Ratios are dense / sparse.
    """
    rows = [_layer_row(name, weight, exported["layers"][name]) for name, weight in original.items()]
    rows.append(_rest_row(exported, dense_rest))
    report = _with_total(pd.DataFrame(rows), original)
    report["csr_ratio"] = report["dense_bytes"] / report["csr_bytes"]
    report["compact_ratio"] = report["dense_bytes"] / report["compact_bytes"]
    return report.fillna({"shape": "", "exported_shape": ""})


def _layer_row(name: str, weight: Tensor, layer: dict) -> dict[str, object]:
    """A prunable layer's sizes: its original dense weight beside its CSR and compact export, and units removed."""
    compact = encode_compact(decode_csr(layer))
    return {
        "layer": name,
        "shape": "x".join(map(str, weight.shape)),
        "exported_shape": "x".join(map(str, layer["shape"])),
        "nonzero": len(layer["values"]),
        "kept": len(layer["values"]) / weight.numel(),
        "dense_bytes": weight.numel() * FLOAT32_BYTES,
        "csr_bytes": csr_bytes(layer),
        "compact_bytes": compact_bytes(compact),
        "index_bits": compact["bits"],
        "fillers": compact["count"] - len(layer["values"]),
        "removed_inputs": weight.shape[1] - layer["shape"][1],
        "removed_outputs": weight.shape[0] - layer["shape"][0],
    }


def _rest_row(exported: dict, dense_rest: int) -> dict[str, object]:
    """The biases and other tensors, stored dense in both formats, so the total counts the whole file."""
    rest = [layer["bias"] for layer in exported["layers"].values() if layer["bias"] is not None]
    rest += list(exported["tensors"].values())
    rest_stored = sum(t.nbytes for t in rest)
    return {
        "layer": "biases+other",
        "nonzero": sum(int(torch.count_nonzero(t)) for t in rest),
        "dense_bytes": dense_rest * FLOAT32_BYTES,
        "csr_bytes": rest_stored,
        "compact_bytes": rest_stored,
    }


def _with_total(report: pd.DataFrame, original: Mapping[str, Tensor]) -> pd.DataFrame:
    """`report` with its total row and counts as nullable ints, so blanks stay blank instead of turning floats."""
    total = report[["nonzero", "dense_bytes", "csr_bytes", "compact_bytes", "fillers"]].sum()
    total_weights = sum(weight.numel() for weight in original.values())
    total_row = {"layer": "total", **total.to_dict(), "kept": report["nonzero"].iloc[:-1].sum() / total_weights}
    report = pd.concat([report, pd.DataFrame([total_row])], ignore_index=True)
    for column in ("nonzero", "dense_bytes", "csr_bytes", "compact_bytes", "index_bits", "fillers"):
        report[column] = report[column].astype("Int64")
    for column in ("removed_inputs", "removed_outputs"):
        report[column] = report[column].fillna(0).astype("Int64")
    # Units removed in all: each is one layer's output (its inputs to the next layer are the same units again,
    # counted in columns, so removed_inputs has no meaningful total).
    report.loc[report.index[-1], "removed_outputs"] = report["removed_outputs"].iloc[:-2].sum()
    report.loc[report.index[-1], "removed_inputs"] = pd.NA
    return report


def format_report(report: pd.DataFrame) -> str:
    """The size report as a fixed-width table: thousands separators, kept in %, ratios as '12.30x', blanks for n/a."""
    patterns = {"kept": "{:.1%}", "csr_ratio": "{:.2f}x", "compact_ratio": "{:.2f}x"}
    text = report.copy()
    for column in text.columns:
        pattern = patterns.get(column, "{:,}" if pd.api.types.is_numeric_dtype(report[column]) else "{}")
        text[column] = ["" if pd.isna(value) else pattern.format(value) for value in report[column]]
    return text.to_string(index=False)


def check_export(exported: object) -> dict:
    """The payload if it is an export of a known model, else ValueError saying what it is not."""
    if not isinstance(exported, dict) or exported.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a sparse export (no format {EXPORT_FORMAT!r}); write one with prune-export")
    if "." not in exported["model"]:  # not a model=custom import path, which only its run can rebuild
        get_model_spec(exported["model"])  # KeyError for an unknown model
    return exported


def load_export(path: Path) -> dict:
    """Read an export file written by `prune-export` (plain tensors, so weights_only)."""
    return check_export(torch.load(path, map_location="cpu", weights_only=True))


def exported_state_dict(exported: dict) -> dict[str, Tensor]:
    """The dense state_dict back, under the model's own keys (prunable weights decoded from CSR)."""
    state = dict(exported["tensors"])
    for layer in exported["layers"].values():
        state[f"{layer['module']}.weight"] = decode_csr(layer)
        if layer["bias"] is not None:
            state[f"{layer['module']}.bias"] = layer["bias"]
    return {key: state[key] for key in exported.get("order", state)}  # a model with norm layers interleaves them


def build_dense_model(exported: dict, spec: ModelSpec | None = None) -> nn.Module:
    """The model with the exported weights, in eval mode; layers shrunk to their exported shapes if needed. `spec`:
    a model=custom run's (`pruning_cli.sparse.cli.model_spec`)."""
    return model_from_state(exported["model"], exported_state_dict(exported), spec)


def model_from_state(model_name: str, state: Mapping[str, Tensor], spec: ModelSpec | None = None) -> nn.Module:
    """The registered model (or `spec`'s) with `state` loaded, in eval mode; prunable layers resized to the state's
    shapes (an export with dead units removed)."""
    if spec is None and "." in model_name:
        raise ValueError(
            f"model {model_name} is a module of your own (model=custom): pass its spec, "
            f"pruning_cli.sparse.cli.model_spec(run_dir, {model_name!r})"
        )
    spec = spec or get_model_spec(model_name)
    model = _uninitialised(spec, state)
    model.load_state_dict(state)
    return model.eval()


def _uninitialised(spec: ModelSpec, state: Mapping[str, Tensor]) -> nn.Module:
    """`spec`'s model shaped for `state`, its memory left as it comes: `state` overwrites all of it, and a random
    initialisation to overwrite took AlexNet 0.8 s under the profiler. Built for real where `state` cannot stand for
    all of it: a module that cannot be built on the meta device, a buffer `state` lacks (persistent=False), a tensor
    held as a plain attribute, or a weight shared by two layers (`to_empty` would untie it)."""
    try:
        with torch.device("meta"):
            model = _fitted(spec, state)
    except Exception:  # a module reading its own values while it is built; building it for real says what is wrong
        return _fitted(spec, state)
    outside_state = any(name not in state for name, _ in model.named_buffers())
    plain = any(isinstance(value, Tensor) for module in model.modules() for value in vars(module).values())
    shared = len(list(model.parameters())) != len(list(model.named_parameters(remove_duplicate=False)))
    if outside_state or plain or shared:
        return _fitted(spec, state)
    return model.to_empty(device="cpu")


def _fitted(spec: ModelSpec, state: Mapping[str, Tensor]) -> nn.Module:
    """`spec`'s model with its prunable layers shaped as in `state` (units removed at export)."""
    paths = list(spec.layers.values())
    model = spec.build(state[f"{paths[-1]}.weight"].shape[0])
    for path in paths:
        module, shape = model.get_submodule(path), tuple(state[f"{path}.weight"].shape)
        if tuple(module.weight.shape) != shape:
            model.set_submodule(path, _resized(module, shape))
    return model


def _resized(module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """A fresh nn.Linear or nn.Conv2d like `module` whose weight has `shape` (units removed at either end)."""
    bias = module.bias is not None
    if isinstance(module, nn.Linear) and len(shape) == 2:
        return nn.Linear(shape[1], shape[0], bias=bias)
    if isinstance(module, nn.Conv2d) and tuple(shape[2:]) == tuple(module.kernel_size) and module.groups == 1:
        options = {key: getattr(module, key) for key in ("stride", "padding", "dilation", "padding_mode")}
        return nn.Conv2d(shape[1], shape[0], module.kernel_size, bias=bias, **options)
    raise ValueError(f"cannot resize {type(module).__name__} {tuple(module.weight.shape)} to the exported {shape}")


def layer_csr(layer: Mapping) -> Csr:
    """The CSR part of an exported layer."""
    return Csr(**{key: layer[key] for key in ("shape", "values", "col_indices", "crow_indices")})


def is_quantized(exported: dict) -> str | None:
    """None if every exported layer shares at most 255 values, else why it is not quantized."""
    for name, layer in exported["layers"].items():
        distinct = layer["values"].unique().numel()
        if distinct > MAX_SHARED_VALUES:
            return (
                f"layer {name} has {distinct:,} distinct weights (a quantized file holds at most "
                f"{MAX_SHARED_VALUES} per layer); run prune-run with quantize=kmeans first"
            )
    return None


def file_sizes(exported: dict, name: str, encoding: str, output: Path | None = None) -> dict[str, int]:
    """The bytes of the `encoding` file of an export per size-report row (each prunable layer's weight entry,
    "biases+other": the rest with header and CRC) and "total"; written to `output` when given."""
    keys = {layer_name: f"{layer['module']}.weight" for layer_name, layer in exported["layers"].items()}
    state, compact_keys = exported_state_dict(exported), set(keys.values())
    if output is None:
        sizes = encode_file(name, state, compact_keys, encoding)[1]
    else:
        sizes = write_compact(output, name, state, compact_keys, encoding)
    rest = sizes["total"] - sum(sizes[key] for key in keys.values())
    return {
        **{layer_name: sizes[key] for layer_name, key in keys.items()},
        "biases+other": rest,
        "total": sizes["total"],
    }
