"""The one place that decides where and how the run computes: device, memory format, precision, determinism.

Model placement, memory format, autocast and determinism are read from a `DevicePolicy`, decided here once per
process; what follows from the device alone (NCCL for CUDA processes, pinned memory for CUDA loaders) stays with
the code that uses it.
"""

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from pruning_cli.config.schema import Precision
from pruning_cli.errors import UserError
from pruning_cli.parallel.shard import Shard


@dataclass(frozen=True)
class DevicePolicy:
    """Where this process computes and how: NHWC convolutions, bf16 autocast, determinism."""

    device: torch.device
    channels_last: bool = False
    bf16_autocast: bool = False  # the device has fast bf16 arithmetic (CUDA, a CPU with AMX): `precision=bf16` uses it
    bf16_by_default: bool = False  # `precision=auto` uses bf16: measured faster for this device and model kind
    deterministic: bool = False

    def place(self, model: nn.Module) -> nn.Module:
        """`model` on the device, in the memory format chosen for it (state_dict keys and values unchanged)."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def autocast(self, precision: Precision) -> AbstractContextManager:
        """The arithmetic of a training step: bf16 autocast where the phase asks for it (or leaves it to this policy,
        which chose it) and the device has it; fp32 otherwise."""
        if self.uses_bf16(precision):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def uses_bf16(self, precision: Precision) -> bool:
        wanted = precision is Precision.bf16 or (precision is Precision.auto and self.bf16_by_default)
        return wanted and self.bf16_autocast

    def describe(self, precisions: dict[str, Precision]) -> dict[str, object]:
        """What this policy makes of the run on this machine (run.json's `runtime`): `precision=auto` is decided
        here, so the same config may compute in bf16 on one CPU and fp32 on another."""
        arithmetic = {phase: "bf16" if self.uses_bf16(precision) else "fp32" for phase, precision in precisions.items()}
        memory_format = "channels_last" if self.channels_last else "contiguous"
        return {"device": str(self.device), "memory_format": memory_format, "arithmetic": arithmetic}

    def apply(self) -> None:
        """Set torch's process-wide switches for this policy (once, before any model is built)."""
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before CUDA starts
        if torch.are_deterministic_algorithms_enabled() != self.deterministic:  # a process may run several runs
            torch.use_deterministic_algorithms(self.deterministic)  # imports torch's compiler: a second, when needed
        if self.device.type == "cuda":
            # fixed input shapes: let cuDNN pick the fastest kernels once, unless runs must repeat bit for bit
            torch.backends.cudnn.benchmark = not self.deterministic


def device_policy(name: str, deterministic: bool, shard: Shard, convolutional: bool) -> DevicePolicy:
    """The policy for `device=name` (auto, cpu, cuda) in this process (its own GPU under torchrun), for a model
    with convolutions or without.

    Measured with `scripts/bench_training.py` (2 Xeon cores with AMX, batch 128):
    - memory format: convolutions run faster in channels_last (NHWC) on both devices (CPU: LeNet-5 1.5x; CUDA:
      cuDNN's tensor-core path); a model without convolutions has nothing to gain;
    - precision: on a CPU with AMX, bf16 autocast trains LeNet-5 1.7x faster again (oneDNN's AMX kernels) but
      LeNet-300-100 0.9x (its matrices are too small), so `precision=auto` picks bf16 for convolutional models there.
      On CUDA bf16 is unmeasured here, so `auto` stays fp32 and `precision=bf16` opts in.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but this machine has no usable CUDA device; use device=cpu or device=auto")
    if name == "cpu":
        amx = cpu_has_amx()
        return DevicePolicy(
            torch.device("cpu"),
            channels_last=convolutional,
            bf16_autocast=amx,
            bf16_by_default=amx and convolutional,
            deterministic=deterministic,
        )
    device = torch.device("cuda", shard.local_rank) if shard.distributed else torch.device("cuda")
    return DevicePolicy(device, channels_last=convolutional, bf16_autocast=True, deterministic=deterministic)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, which oneDNN uses for bf16 matrix products (Sapphire Rapids and later)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, but the only probe torch has
    return bool(probe and probe())
