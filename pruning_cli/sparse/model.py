"""Inference with sparse fc layers: each pruned nn.Linear becomes a `torch.sparse` CSR matrix product.

Conv layers stay dense (their weights are 12-84% kept in the paper, too dense for sparse kernels to pay off).
The LeNets' forward only calls `self.fc1(x)` etc., so swapping the modules keeps their forward as it is.
"""

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pruning_cli.models import ModelSpec, get_model_spec
from pruning_cli.sparse.export import build_dense_model, layer_csr, model_from_state
from pruning_cli.sparse.formats import Csr, encode_csr, to_sparse_csr_tensor


class SparseLinear(nn.Module):
    """y = x W^T + b with W held as a sparse CSR tensor; drop-in for nn.Linear at inference."""

    def __init__(self, csr: Csr, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = csr["shape"]
        self.register_buffer("weight", to_sparse_csr_tensor(csr))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> "SparseLinear":
        """The sparse twin of a (pruned) nn.Linear, on the same device."""
        sparse = cls(encode_csr(linear.weight.detach().cpu()), linear.bias)
        return sparse.to(linear.weight.device)

    def forward(self, inputs: Tensor) -> Tensor:
        # CSR x dense needs the batch as columns: (out, in) @ (in, batch), then back to (batch, out).
        columns = inputs.reshape(-1, self.in_features).T
        if self.bias is None:
            outputs = self.weight @ columns
        else:
            outputs = torch.addmm(self.bias.unsqueeze(1), self.weight, columns)
        return outputs.T.reshape(*inputs.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}"


def sparsify(model: nn.Module, module_paths: Iterable[str]) -> nn.Module:
    """Replace each nn.Linear at `module_paths` by its SparseLinear, in place; other modules stay dense."""
    for path in module_paths:
        module = model.get_submodule(path)
        if isinstance(module, nn.Linear):
            model.set_submodule(path, SparseLinear.from_dense(module))
    return model


def build_sparse_model(exported: dict, spec: ModelSpec | None = None) -> nn.Module:
    """The inference model of an export: fc layers straight from the stored CSR, conv layers dense; eval mode.
    `spec`: a model=custom run's (`pruning_cli.sparse.cli.model_spec`)."""
    model = build_dense_model(exported, spec)
    for layer in exported["layers"].values():
        if isinstance(model.get_submodule(layer["module"]), nn.Linear):
            model.set_submodule(layer["module"], SparseLinear(layer_csr(layer), layer["bias"]))
    return model.eval()


def sparse_model_from_state(state: dict[str, Tensor], model_name: str) -> nn.Module:
    """A sparse inference model straight from a pruned state_dict (no dead-unit removal)."""
    spec = get_model_spec(model_name)
    return sparsify(model_from_state(model_name, state, spec), spec.layers.values()).eval()
