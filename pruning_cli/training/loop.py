"""Train a phase with masks that keep pruned weights at exactly zero, and evaluate top-1/top-5/loss."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pruning_cli.config import PhaseConfig, Precision, Regularization
from pruning_cli.data.tensors import TensorSplit
from pruning_cli.distributed import SINGLE_PROCESS, Shard
from pruning_cli.pruning.masks import apply_masks_


@dataclass(frozen=True)
class Evaluation:
    """Accuracies in [0, 1] and the mean cross-entropy."""

    top1: float
    top5: float
    loss: float


class MaskedWeights:
    """Pruned weights and their masks, as parallel lists so that masking one step is one fused call.

    Masking the weights after `optimizer.step()` makes "exactly zero" hold whatever the optimizer does (momentum,
    weight decay, ...). The gradients are not masked: SGD is elementwise, so what the step does to a pruned
    entry (and its momentum buffer) never reaches a surviving weight, and the mask zeroes it right after. One
    pass over the weights per step instead of two.
    """

    def __init__(self, weights: list[Tensor], masks: list[Tensor]) -> None:
        self.weights = weights
        self.masks = [mask.to(weight.dtype) for weight, mask in zip(weights, masks, strict=True)]

    def mask_weights(self) -> None:
        apply_masks_(self.weights, self.masks)


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite during the given (1-based) epoch of a phase."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"non-finite training loss in epoch {epoch}")
        self.epoch = epoch


class StopRequested(Exception):
    """The run was asked to stop (SIGINT/SIGTERM) and stopped between two batches."""


@dataclass(frozen=True)
class EpochStats:
    """One finished training epoch: its mean loss, the learning rate it ended at, and its throughput."""

    epoch: int  # 1-based within the phase
    train_loss: float
    lr: float
    images: int
    seconds: float  # the training steps only (the epoch ends with a host sync, so GPU work is included)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class PhaseProgress:
    """What resuming a phase needs: epochs done, optimizer and scheduler state, the last epoch's loss."""

    epochs_done: int = 0
    optimizer: dict | None = None
    scheduler: dict | None = None
    train_loss: float = float("nan")


def train_phase(
    model: nn.Module,
    data: TensorSplit,
    phase: PhaseConfig,
    masked: MaskedWeights,
    generator: torch.Generator,
    description: str,
    progress: PhaseProgress | None = None,
    on_epoch_end: Callable[[PhaseProgress, EpochStats], None] = lambda progress, stats: None,
    stop_requested: Callable[[], bool] = lambda: False,
    shard: Shard = SINGLE_PROCESS,
) -> float:
    """Run the remaining epochs of `phase` on `data`; return the mean training loss of the last epoch.

    `progress` resumes a phase where it stopped; `on_epoch_end` receives the progress after every epoch (to
    checkpoint it) and the epoch's statistics (to log them); `stop_requested` is polled between batches and
    raises StopRequested when true. With several processes (`shard`), `model` is the DistributedDataParallel
    wrapper, each process trains on its part of every global batch, and loss and image counts are summed.
    """
    progress = progress or PhaseProgress()
    decay = phase.weight_decay if phase.regularization is Regularization.l2 else 0.0
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=phase.lr, momentum=phase.momentum, weight_decay=decay)
    batches_per_epoch = data.num_batches(phase.batch_size, shard)
    if phase.max_batches is not None:
        batches_per_epoch = min(batches_per_epoch, phase.max_batches)
    steps = max(1, phase.epochs * batches_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if phase.cosine else None
    if progress.optimizer is not None:
        optimizer.load_state_dict(progress.optimizer)
    if scheduler is not None and progress.scheduler is not None:
        scheduler.load_state_dict(progress.scheduler)
    epoch_loss = progress.train_loss
    mixed = phase.precision is Precision.bf16 and data.device.type == "cuda"
    epochs = range(progress.epochs_done, phase.epochs)
    for epoch in tqdm(epochs, desc=description, unit="epoch", disable=None, leave=False):
        model.train()
        started = time.perf_counter()
        loss_sum, seen = torch.zeros((), device=data.device), 0
        batches = islice(data.batches(phase.batch_size, generator, shard), batches_per_epoch)
        for images, labels in tqdm(batches, total=batches_per_epoch, disable=None, leave=False):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mixed):
                loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            if phase.regularization is Regularization.l1 and phase.weight_decay:
                grads = [parameter.grad for parameter in parameters]
                torch._foreach_add_(grads, torch._foreach_sign(parameters), alpha=phase.weight_decay)
            optimizer.step()
            masked.mask_weights()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
            if stop_requested():
                raise StopRequested
        totals = shard.sum_(torch.stack([loss_sum, loss_sum.new_tensor(seen)]))  # over all processes
        loss_total, seen = totals.tolist()  # one host sync per epoch
        epoch_loss = loss_total / max(seen, 1)
        seconds = time.perf_counter() - started
        if not math.isfinite(epoch_loss):
            raise NonFiniteLoss(epoch + 1)
        scheduler_state = scheduler.state_dict() if scheduler is not None else None
        stats = EpochStats(epoch + 1, epoch_loss, optimizer.param_groups[0]["lr"], int(seen), seconds)
        on_epoch_end(PhaseProgress(epoch + 1, optimizer.state_dict(), scheduler_state, epoch_loss), stats)
    return epoch_loss


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorSplit, batch_size: int = 1000) -> Evaluation:
    """Top-1 and top-5 accuracy and mean cross-entropy of `model` on `data`."""
    model.eval()
    loss_sum = torch.zeros((), device=data.device)
    hits = torch.zeros(2, device=data.device)
    for images, labels in data.batches(batch_size):
        logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
        hits += torch.stack([top[:, 0].sum(), top.any(dim=1).sum()])
    top1, top5 = (hits / len(data)).tolist()
    return Evaluation(top1=top1, top5=top5, loss=loss_sum.item() / len(data))
