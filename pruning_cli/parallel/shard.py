"""Data-parallel training over several processes (`torchrun --nproc_per_node=N`), one GPU (or CPU) each.

Every process holds the whole model and the same masks and walks the same batch order; each trains on its
share of every global batch (`train.batch_size` stays the global batch, so N processes compute what one
process would, up to float rounding), and DistributedDataParallel averages the gradients. Only rank 0
evaluates and writes files. A single process uses `Shard()`, whose collectives do nothing.
"""

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Shard:
    """This process's place among `world_size` processes; `Shard()` is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # A gloo group for the per-batch stop flag: a CPU collective that never waits for the GPU's queue to drain.
    control_group: Any = None

    @classmethod
    def from_environment(cls) -> "Shard":
        """The shard torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (a plain process: `Shard()`)."""
        return cls(*(int(os.environ.get(key, default)) for key, default in SHARD_VARIABLES))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates, logs and writes files."""
        return self.rank == 0

    def split(self, batch: Tensor) -> Tensor:
        """This process's part of a global batch of indices: every world_size-th, from its rank on."""
        return batch[self.rank :: self.world_size]

    def global_batches(self, order: Tensor, batch_size: int) -> Iterator[Tensor]:
        """This process's part of each global batch of `order`. A last, partial batch is cut to a multiple of
        the number of processes, so that every process averages over as many images and DDP's mean of their
        gradients is the gradient of the global batch (a single process keeps it whole)."""
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            batch = batch[: len(batch) - len(batch) % self.world_size]
            if len(batch) == 0:
                return
            yield self.split(batch)

    def num_batches(self, size: int, batch_size: int) -> int:
        """How many batches `global_batches` yields for `size` images."""
        full, rest = divmod(size, batch_size)
        return full + (rest >= self.world_size)

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum `tensor` over all processes, in place (a CPU tensor goes through gloo as it is)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any (so that all stop at the same batch)."""
        if not self.distributed:
            return flag
        votes = torch.tensor([int(flag)])
        dist.all_reduce(votes, group=self.control_group)
        return bool(votes.item())

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite `tensors` on every process with rank 0's (bool tensors travel as uint8)."""
        if not self.distributed:
            return
        for tensor in tensors:
            carrier = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
            dist.broadcast(carrier, src=0)
            if carrier is not tensor:
                tensor.copy_(carrier.bool())

    def agreed(self, value: float, device: torch.device) -> float:
        """Rank 0's `value` on every process (kernels chosen per GPU can tip a number at a threshold)."""
        carrier = torch.tensor([value], dtype=torch.float64, device=device)
        self.broadcast_([carrier])
        return carrier.item()

    def check_identical(self, tensors: Sequence[Tensor], what: str) -> None:
        """Raise on every process if `tensors` differ between processes: checksums per tensor (sum, sum of
        magnitudes, sum of every 7th entry; one tensor-sized temporary at a time), gathered through the control
        group."""
        if not self.distributed:
            return
        digest = torch.stack(
            [
                part.sum(dtype=torch.float64)
                for tensor in tensors
                for part in (tensor.detach(), tensor.detach().abs(), tensor.detach().flatten()[3::7])
            ]
        ).cpu()
        gathered = [torch.empty_like(digest) for _ in range(self.world_size)]
        dist.all_gather(gathered, digest, group=self.control_group)
        if any(not torch.equal(other, gathered[0]) for other in gathered[1:]):
            raise RuntimeError(f"{what} differ between the {self.world_size} processes")

    def barrier(self) -> None:
        """Wait for every process, through the control group (gloo: a 30-minute timeout, not NCCL's 10)."""
        if self.distributed:
            dist.barrier(group=self.control_group)

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. a download into a shared folder), then the others; if rank 0 fails,
        the others still run it (and fail the same way) instead of waiting forever."""
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:
            if self.is_main:
                self.barrier()

    def reseed(self, seed: int, position: int) -> None:
        """Own dropout draws per process from `position` on (rank 0 keeps the seed's stream): the same stream
        everywhere would give the k-th image of every process the same dropout mask."""
        if self.rank > 0:
            torch.manual_seed(seed + 1_000_003 * self.rank + position)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`model` under DistributedDataParallel when there are several processes (its parameters are rank 0's
        afterwards); the plain model otherwise. Build it per phase: DDP fixes which parameters train."""
        if not self.distributed:
            return model
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)


SHARD_VARIABLES = (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))
SINGLE_PROCESS = Shard()


@contextmanager
def process_group(shard: Shard, device: torch.device) -> Iterator[Shard]:
    """Join torchrun's process group for the duration of the run (NCCL on GPUs, gloo on CPUs); yields the shard
    with its control group (a gloo group beside NCCL, the default group on CPUs)."""
    if not shard.distributed:
        yield shard
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        control_group = dist.new_group(backend="gloo")
    else:
        dist.init_process_group("gloo")
        control_group = None
    try:
        yield replace(shard, control_group=control_group)
        # Leave together: a process that tore gloo down while the other still wrote its files aborted on exit
        # now and then ("terminate called without an active exception").
        dist.barrier(group=control_group)
    finally:
        dist.destroy_process_group()
