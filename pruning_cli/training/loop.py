"""Train a phase with masks that keep pruned weights at exactly zero, and evaluate top-1/top-5/loss."""

import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from itertools import islice

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from tqdm.auto import tqdm

from pruning_cli.config.schema import PhaseConfig, Regularization
from pruning_cli.data.tensors import TensorSplit
from pruning_cli.parallel.shard import SINGLE_PROCESS, Shard
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
    pass over the weights per step instead of two. A layer whose mask keeps every weight (all of them, in the dense
    phase) is left out: multiplying by one would cost a pass and change nothing.
    """

    def __init__(self, weights: list[Tensor], masks: list[Tensor]) -> None:
        self.reset(weights, masks)

    def reset(self, weights: list[Tensor], masks: list[Tensor]) -> None:
        """Gate `weights` by new `masks` from now on (a policy that prunes during training)."""
        pruned = [(weight, mask) for weight, mask in zip(weights, masks, strict=True) if not bool(mask.all())]
        self.weights = [weight for weight, _ in pruned]
        self.masks = [mask.to(weight.dtype) for weight, mask in pruned]

    def mask_weights(self) -> None:
        apply_masks_(self.weights, self.masks)

    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights: an optimizer that is not elementwise in its state (AdamW's moments
        scale each step by past gradients) then keeps zero state for them, and masking the weights after its step
        keeps them at zero."""
        pairs = [(weight.grad, mask) for weight, mask in zip(self.weights, self.masks, strict=True)]
        grads = [grad for grad, _ in pairs if grad is not None]
        if grads:
            torch._foreach_mul_(grads, [mask for grad, mask in pairs if grad is not None])


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation (Hinton et al. 2015) from `teacher`: (1 - weight) CE + weight T^2 KL(teacher || student)
    on the logits softened by the temperature T."""

    teacher: nn.Module
    weight: float
    temperature: float

    def loss(self, logits: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            taught = self.teacher(images)
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits.float() / self.temperature, dim=1),
            nn.functional.log_softmax(taught.float() / self.temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        hard = nn.functional.cross_entropy(logits, labels)
        return (1 - self.weight) * hard + self.weight * self.temperature**2 * soft


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
    """What resuming a phase needs: epochs done, optimizer state (momentum), the last epoch's loss. The learning
    rate follows from the steps done."""

    epochs_done: int = 0
    optimizer: dict | None = None
    train_loss: float = float("nan")


@dataclass(frozen=True)
class Schedule:
    """A phase's learning-rate schedule: a torch.optim.lr_scheduler class (or a partial of one), stepped after every
    optimizer step (`per_step`) or every epoch. Its length argument, when it has one the partial does not give, is
    the phase's length in those units."""

    factory: Callable[..., LRScheduler] = partial(CosineAnnealingLR, eta_min=0.0)
    per_step: bool = True

    def build(self, optimizer: torch.optim.Optimizer, steps: int, epochs: int) -> LRScheduler:
        scheduler_class, given = getattr(self.factory, "func", self.factory), getattr(self.factory, "keywords", {})
        parameters = inspect.signature(scheduler_class).parameters
        length = max(1, steps if self.per_step else epochs)
        return self.factory(optimizer, **{key: length for key in LENGTHS if key in parameters and key not in given})


LENGTHS = ("T_max", "total_iters")  # the arguments by which torch's schedulers take their length


@dataclass(frozen=True)
class Optimization:
    """How every phase updates the weights: the optimizer, built from the parameters, lr and weight_decay (SGD also
    gets the phase's momentum), and the learning-rate schedule."""

    optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.SGD
    schedule: Schedule = Schedule()


@dataclass(frozen=True)
class PhaseExecution:
    """How a phase runs beyond its settings: the draw of its batch order, its progress bar's label, where it resumes
    (`progress`), the processes that share every batch (`shard`; the model is then DDP's wrapper), the arithmetic
    of a step (`autocast`) and a teacher's soft targets (`distill`)."""

    generator: torch.Generator
    description: str
    progress: PhaseProgress = field(default_factory=PhaseProgress)
    shard: Shard = SINGLE_PROCESS
    autocast: Callable[[], AbstractContextManager] = nullcontext
    distill: Distillation | None = None
    optimization: "Optimization" = field(default_factory=lambda: Optimization())


@dataclass(frozen=True)
class PhaseCallbacks:
    """What a phase calls: after every epoch with its progress and statistics (to checkpoint and log them), between
    batches to ask whether to stop (StopRequested when true), after every optimizer step with the steps done and
    their total (a policy that raises masks during training)."""

    on_epoch_end: Callable[[PhaseProgress, EpochStats], None] = lambda progress, stats: None
    stop_requested: Callable[[], bool] = lambda: False
    on_step: Callable[[int, int], None] | None = None


def train_phase(
    model: nn.Module,
    data: TensorSplit,
    phase: PhaseConfig,
    masked: MaskedWeights,
    execution: PhaseExecution,
    callbacks: PhaseCallbacks = PhaseCallbacks(),
) -> float:
    """Run the remaining epochs of `phase` on `data`; return the mean training loss of the last epoch."""
    shard, progress = execution.shard, execution.progress
    batches_per_epoch = min(data.num_batches(phase.batch_size, shard), phase.max_batches or math.inf)
    step = _MaskedStep(model, phase, masked, batches_per_epoch, execution, callbacks.on_step)
    epoch_loss, epochs = progress.train_loss, range(progress.epochs_done, phase.epochs)
    for epoch in tqdm(epochs, desc=execution.description, unit="epoch", disable=None, leave=False):
        model.train()
        started = time.perf_counter()
        batches = islice(data.batches(phase.batch_size, execution.generator, shard), batches_per_epoch)
        loss_sum, seen = step.epoch(
            tqdm(batches, total=batches_per_epoch, disable=None, leave=False), callbacks.stop_requested, data.device
        )
        loss_total, seen = shard.sum_(torch.stack([loss_sum, loss_sum.new_tensor(seen)])).tolist()  # one host sync
        epoch_loss = loss_total / max(seen, 1)
        if not math.isfinite(epoch_loss):
            raise NonFiniteLoss(epoch + 1)
        stats = EpochStats(epoch + 1, epoch_loss, step.lr, int(seen), time.perf_counter() - started)
        callbacks.on_epoch_end(step.progress(epoch + 1, epoch_loss), stats)
    return epoch_loss


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], parameters: list[Tensor], phase: PhaseConfig, decay: float
) -> torch.optim.Optimizer:
    """`factory` (an optimizer class, or a partial of one) on `parameters` at the phase's lr and `decay`; SGD also
    with the phase's momentum."""
    optimizer_class = getattr(factory, "func", factory)
    momentum = {"momentum": phase.momentum} if issubclass(optimizer_class, torch.optim.SGD) else {}
    return factory(parameters, lr=phase.lr, weight_decay=decay, **momentum)


class _MaskedStep:
    """One masked optimizer step of a phase (SGD with momentum by default; L2 or L1 decay; the phase's learning-rate
    schedule, cosine by default), resumable from its progress: the schedule is replayed to the steps done."""

    def __init__(
        self,
        model: nn.Module,
        phase: PhaseConfig,
        masked: MaskedWeights,
        batches_per_epoch: int,
        execution: PhaseExecution,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        self.model, self.masked, self.autocast = model, masked, execution.autocast
        self.on_step, self.distill, progress = on_step, execution.distill, execution.progress
        self.parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        self.l1 = phase.weight_decay if phase.regularization is Regularization.l1 else 0.0
        decay = phase.weight_decay if phase.regularization is Regularization.l2 else 0.0
        self.optimizer = build_optimizer(execution.optimization.optimizer, self.parameters, phase, decay)
        # SGD is elementwise: a pruned weight's gradient never reaches a survivor, and masking the weight after the
        # step suffices (one pass, not two); other optimizers get masked gradients, so their state stays zero.
        self.masks_gradients = not isinstance(self.optimizer, torch.optim.SGD)
        self.total_steps = max(1, phase.epochs * batches_per_epoch)
        self.steps_done = progress.epochs_done * batches_per_epoch
        schedule = execution.optimization.schedule
        self.per_step = schedule.per_step
        self.scheduler = schedule.build(self.optimizer, self.total_steps, phase.epochs)
        with warnings.catch_warnings():  # replayed before any optimizer step, which torch warns of
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(self.steps_done if self.per_step else progress.epochs_done):
                self.scheduler.step()
        if progress.optimizer is not None:
            self.optimizer.load_state_dict(progress.optimizer)

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        """Train on one batch; return its mean loss (on the device: no host sync)."""
        with self.autocast():
            logits = self.model(images)
            loss = (
                self.distill.loss(logits, images, labels)
                if self.distill
                else nn.functional.cross_entropy(logits, labels)
            )
        self.optimizer.zero_grad()  # set_to_none: backward writes fresh gradients instead of adding to zeros
        loss.backward()
        if self.l1:
            grads = [parameter.grad for parameter in self.parameters]
            torch._foreach_add_(grads, torch._foreach_sign(self.parameters), alpha=self.l1)
        if self.masks_gradients:
            self.masked.mask_gradients()
        self.optimizer.step()
        self.masked.mask_weights()
        self.steps_done += 1
        if self.per_step:
            self.scheduler.step()
        if self.on_step is not None:
            self.on_step(self.steps_done, self.total_steps)
        return loss.detach()

    def epoch(
        self, batches: Iterable[tuple[Tensor, Tensor]], stop_requested: Callable[[], bool], device: torch.device
    ) -> tuple[Tensor, int]:
        """Train on every batch; return the summed loss (on `device`: no host sync) and the number of images.
        Polls `stop_requested` after every batch and raises StopRequested when it is true."""
        loss_sum, seen = torch.zeros((), device=device), 0
        for images, labels in batches:
            loss_sum += self(images, labels) * len(labels)
            seen += len(labels)
            if stop_requested():
                raise StopRequested
        if not self.per_step:
            self.scheduler.step()
        return loss_sum, seen

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def progress(self, epochs_done: int, train_loss: float) -> PhaseProgress:
        return PhaseProgress(epochs_done, self.optimizer.state_dict(), train_loss)


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorSplit, batch_size: int = 1000) -> Evaluation:
    """Top-1 and top-5 accuracy and mean cross-entropy of `model` on `data`."""
    model.eval()
    loss_sum = torch.zeros((), device=data.device)
    hits = torch.zeros(2, dtype=torch.long, device=data.device)  # counts, divided exactly below
    for images, labels in data.batches(batch_size):
        logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
        hits += torch.stack([top[:, 0].sum(), top.any(dim=1).sum()])
    top1, top5 = (count / len(data) for count in hits.tolist())  # in float64: 4475 / 5000 is 0.895, not 0.89499998
    return Evaluation(top1=top1, top5=top5, loss=loss_sum.item() / len(data))


@torch.no_grad()
def correct_predictions(model: nn.Module, data: TensorSplit, batch_size: int = 1000) -> Tensor:
    """Per image of `data`, whether `model`'s top-1 prediction is its label (bool): what a paired comparison of two
    models on the same images needs."""
    model.eval()
    return torch.cat([model(images).argmax(dim=1) == labels for images, labels in data.batches(batch_size)])
