"""2:4 layers for the sparse tensor cores: the export of a model pruned with `pruning.pattern=2:4`, and the model
that runs those layers with `torch.sparse.to_sparse_semi_structured` on a CUDA GPU (Ampere or later).

A layer is stored 2:4 when every group of 4 consecutive weights along each row holds at most 2 non-zeros and its
shape is one the kernels take (pruning/nm_sparsity.py); the group's two slots are its non-zeros in column order, then
its first zero positions if it has fewer. That is what the kernels' compressed form holds (half the values and a
2-bit index each), in a layout of its own that any machine reads (the kernels' metadata order is the GPU's):

    {"format": SEMI_STRUCTURED_FORMAT, "model": name, "pattern": "2:4",
     "layers": {module path: {"shape": (rows, columns), "values": (rows, columns / 2) float32,
                              "positions": uint8, each group's two slots (0-3, ascending) as 2-bit numbers,
                                           packed 4 to a byte, least significant bits first}},
     "tensors": {every other state_dict key: tensor}, "order": the state_dict's key order}

so `torch.load(..., weights_only=True)` reads it on any machine, and `semi_structured_state` decodes it exactly.
A layer so stored takes 17/32 of its dense float32 bytes (half the values, 2 bits per kept slot).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from pruning_cli.models import ModelSpec
from pruning_cli.pruning.nm_sparsity import fits_semi_structured
from pruning_cli.sparse.export import model_from_state
from pruning_cli.sparse.formats import pack_bits, unpack_bits

SEMI_STRUCTURED_FORMAT = "pruning_cli.semi_structured/1"
GROUP, KEPT = 4, 2  # NVIDIA's 2:4: at most 2 of every 4
POSITION_BITS = 2
NO_TWO_FOUR = (
    "no layer 2:4 sparse with a shape the 2:4 kernels take (a Linear of rows a multiple of 32 and columns a "
    "multiple of 64); prune with pruning.pattern=2:4"
)
MIN_CAPABILITY = (8, 0)  # sparse tensor cores: Ampere and later
KERNEL_DTYPES = (torch.float16, torch.bfloat16)  # what the 2:4 kernels take for the shapes fits_semi_structured accepts


def is_two_four(weight: Tensor) -> bool:
    """Whether `weight` can run on the 2:4 kernels: a shape they take, and at most 2 non-zeros in every group of 4
    consecutive weights along each row."""
    if not fits_semi_structured(tuple(weight.shape), GROUP):
        return False
    return bool(((weight != 0).reshape(weight.shape[0], -1, GROUP).sum(dim=2) <= KEPT).all())


def encode_two_four(weight: Tensor) -> dict:
    """A 2:4 weight as its kept values and their positions (module docstring); ValueError if it is not 2:4."""
    if not is_two_four(weight):
        raise ValueError(f"a weight of shape {tuple(weight.shape)} is not 2:4 sparse with a shape the kernels take")
    rows, columns = weight.shape
    groups = weight.detach().cpu().reshape(rows, columns // GROUP, GROUP)
    zero_last = (groups == 0).to(torch.uint8).argsort(dim=2, stable=True)  # non-zeros first, in column order
    slots = zero_last[..., :KEPT].sort(dim=2).values
    return {
        "shape": (rows, columns),
        "values": groups.gather(2, slots).reshape(rows, columns // GROUP * KEPT).clone(),
        "positions": pack_bits(slots.flatten(), POSITION_BITS),
    }


def decode_two_four(layer: Mapping) -> Tensor:
    """The dense weight back from `encode_two_four`'s values and positions."""
    rows, columns = layer["shape"]
    slots = unpack_bits(layer["positions"], POSITION_BITS, rows * columns // GROUP * KEPT)
    values = layer["values"].reshape(rows, columns // GROUP, KEPT)
    groups = values.new_zeros(rows, columns // GROUP, GROUP)
    return groups.scatter_(2, slots.reshape(rows, columns // GROUP, KEPT), values).reshape(rows, columns)


def two_four_layers(state: Mapping[str, Tensor], spec: ModelSpec) -> list[str]:
    """The module paths of the model's prunable layers whose weights in `state` are 2:4 (`is_two_four`)."""
    weights = {path: state.get(f"{path}.weight") for path in spec.layers.values()}
    return [path for path, weight in weights.items() if weight is not None and is_two_four(weight)]


def export_semi_structured(state: Mapping[str, Tensor], model_name: str, paths: Sequence[str]) -> dict:
    """The payload of `model_semi_structured.pt` (module docstring), the layers at `paths` (`two_four_layers`)
    compressed; ValueError when there is none."""
    if not paths:
        raise ValueError(f"the state_dict has {NO_TWO_FOUR}")
    keys = {f"{path}.weight": path for path in paths}
    return {
        "format": SEMI_STRUCTURED_FORMAT,
        "model": model_name,
        "pattern": f"{KEPT}:{GROUP}",
        "layers": {path: encode_two_four(state[key]) for key, path in keys.items()},
        "tensors": {key: value.detach().cpu() for key, value in state.items() if key not in keys},
        "order": list(state),
    }


def load_semi_structured(path: Path) -> dict:
    """Read a `model_semi_structured.pt` written by `prune-export --format semi_structured`."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != SEMI_STRUCTURED_FORMAT:
        raise ValueError(
            f"{path} is not a 2:4 export (no format {SEMI_STRUCTURED_FORMAT!r}); write one with "
            "prune-export --format semi_structured"
        )
    return payload


def semi_structured_state(payload: Mapping) -> dict[str, Tensor]:
    """The dense state_dict back, under the model's own keys and order (2:4 layers decoded exactly)."""
    state = dict(payload["tensors"])
    state |= {f"{path}.weight": decode_two_four(layer) for path, layer in payload["layers"].items()}
    return {key: state[key] for key in payload["order"]}


def semi_structured_model(
    payload: Mapping, device: torch.device | str, dtype: torch.dtype = torch.float16, spec: ModelSpec | None = None
) -> nn.Module:
    """The exported model in eval mode on `device` in `dtype`, its 2:4 layers run by the sparse tensor cores
    (`to_sparse_semi_structured`); the others stay dense. Needs a CUDA GPU of compute capability 8.0 or later.
    `spec`: how to build the model (default: the registered or torchvision model the payload names)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(
            f"the 2:4 kernels run on a CUDA GPU, not on {device}; on the CPU load the dense weights: "
            "model_from_state(payload['model'], semi_structured_state(payload))"
        )
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"the 2:4 kernels take {' or '.join(map(str, KERNEL_DTYPES))} weights, not {dtype}")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise ValueError(
            f"{torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]}) "
            "has no sparse tensor cores; the 2:4 kernels need 8.0 (Ampere) or later"
        )
    model = model_from_state(payload["model"], semi_structured_state(payload), spec).to(device, dtype)
    return to_semi_structured(model, list(payload["layers"]))


def to_semi_structured(model: nn.Module, paths: Sequence[str]) -> nn.Module:
    """Swap each Linear's weight at `paths` (on CUDA, fp16/bf16, 2:4) for its semi-structured sparse tensor, in
    place, as PyTorch's recipe does: `F.linear` then dispatches to the 2:4 kernels. Only a plain `nn.Linear`: a
    subclass may be read by another operator (attention's `out_proj`, in its fused path) that the sparse tensor
    does not take, so it stays dense."""
    from torch.sparse import to_sparse_semi_structured

    for path in paths:
        linear = model.get_submodule(path)
        if type(linear) is nn.Linear:
            linear.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach().contiguous()), False)
    return model
