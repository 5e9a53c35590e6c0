"""The paper's method end to end: train (or load) the dense model, then prune -> retrain, iterated."""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from pruning_cli.artifacts import CsvLog, load_checkpoint, state_dict_mismatch
from pruning_cli.config import PhaseConfig, RunConfig, StdSource
from pruning_cli.data import ImageData, TensorSplit, load_data
from pruning_cli.data.tensors import VALIDATION_SPLIT_SEED
from pruning_cli.distributed import SINGLE_PROCESS, Shard, process_group
from pruning_cli.errors import UserError
from pruning_cli.models.pretrained import build_model
from pruning_cli.plan import AnalysisPlan, IterationPlan, RunPlan, plan_run
from pruning_cli.pruning.dropout import rescaled_dropout
from pruning_cli.pruning.masks import full_masks
from pruning_cli.pruning.step import LayerStep, prune_step, surviving_std
from pruning_cli.pruning.targets import LayerTarget
from pruning_cli.quantize.kmeans import Codebook, quantize_layer
from pruning_cli.quantize.shared import SharedGradients
from pruning_cli.recorder import Recorder, weights_of
from pruning_cli.records import (
    CHECKPOINTS,
    METRICS,
    SENSITIVITY,
    TrainedOn,
    TrainingData,
    checkpoint_training_data,
    fingerprint,
    training_history,
    write_run_record,
)
from pruning_cli.run_state import RunStore, check_masks, check_restored_masks
from pruning_cli.runtime import DevicePolicy, device_policy
from pruning_cli.sensitivity import choose_sensitivities, layer_sensitivity
from pruning_cli.training.freeze import frozen
from pruning_cli.training.loop import MaskedWeights, NonFiniteLoss, PhaseProgress, StopRequested, evaluate, train_phase

log = logging.getLogger(__name__)
# How often pruning=auto halves the layer budget looking for a step other than the one just rolled back.
MAX_SHRINKS = 10


@dataclass
class AutoProgress:
    """Where pruning=auto stands: the last iteration within the budget (0: dense), whether it has stopped, the
    dense model's validation top-1 that the budget is counted from, the iterations rolled back since the last one
    kept, the layer budget of the next step (a fraction), and the steps tried and rejected."""

    accepted: int = 0
    stopped: bool = False
    dense_val_top1: float = float("nan")
    rollbacks: int = 0
    layer_budget: float = float("nan")
    trying: dict[str, float] = field(default_factory=dict)  # this iteration's sensitivities
    rejected: dict[str, float] = field(default_factory=dict)  # those of the step just rolled back


class PruningRun:
    """One run's model, masks and progress, and the paper's three phases over them.

    After every epoch and every step the whole state goes to `checkpoints/last.pt` (atomically), so a run that
    is killed at any moment continues, when started again into the same directory, from its last completed
    epoch, with the same numbers it would have produced uninterrupted.

    With several processes (`shard`), every process runs every step on identical weights and masks; only rank 0
    evaluates and writes, and all of them read `last.pt` to resume.
    """

    def __init__(
        self, config: RunConfig, plan: RunPlan, data: ImageData, policy: DevicePolicy, store: RunStore,
        shard: Shard = SINGLE_PROCESS,
    ) -> None:  # fmt: skip
        self.config, self.plan, self.data, self.shard = config, plan, data, shard
        self.policy, self.store = policy, store
        spec = plan.spec
        self.model = policy.place(build_model(spec, config.model.name, data.num_classes, config.model.weights))
        # Compiled once and reused by every phase (a fresh wrapper per phase would recompile each time); the
        # compiled module shares the model's parameters, so masks and checkpoints see the same tensors.
        self.train_model = torch.compile(self.model) if config.compile else self.model
        self.layers = spec.prunable(self.model)
        self.weights, self.masks = weights_of(self.layers), full_masks(weights_of(self.layers))
        self.dropout_rates = {name: self.model.get_submodule(path).p for name, path in spec.dropouts.items()}
        self.dense_std: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step, self.phase_progress, self.current = 0, PhaseProgress(), ("train", 0)
        self.auto = AutoProgress()
        self.codebooks: dict[str, Codebook] = {}  # trained quantization: each layer's clusters (phase 4)
        self.stop_requested: Callable[[], bool] = lambda: False
        rows = self._restore() if config.resume and store.state_path.is_file() else None
        where = torch.tensor([self.step, self.phase_progress.epochs_done])
        shard.check_identical([where], f"resume points (is {store.state_path} on a disk every process sees?)")
        shard.reseed(config.seed, 1009 * self.step + self.phase_progress.epochs_done)  # where a resumed run picks up
        positions = spec.output_positions(self.model)
        self.recorder = Recorder(
            store.out_dir, self.layers, positions, data, config.dataset.eval_batch_size, shard.is_main, rows
        )

    def execute(self) -> None:
        """Phase 1, then phases 2 and 3 once per iteration, then trained quantization if asked for; the steps a
        resumed run has done are skipped."""
        self._run_step(0, "train", self.train_dense)
        for iteration, plan in enumerate(self.plan.iterations, start=1):
            self._run_step(2 * iteration - 1, "prune", partial(self.prune, iteration, plan))
            self._run_step(2 * iteration, "retrain", partial(self.retrain, iteration, plan))
        if self.plan.quantize_bits is not None:
            self._run_step(2 * len(self.plan.iterations) + 1, "quantize", self.quantize)
        if self.stop_requested():  # also makes every process wait here for rank 0's last evaluation
            raise StopRequested
        self.shard.check_identical(list(self.model.parameters()), "final weights")
        self.store.save_model(self.model, self.plan.spec.layers, self.masks)

    def train_dense(self) -> None:
        """Phase 1: train the dense model, or load it from `train.checkpoint` and only evaluate it."""
        start, epochs, train_loss = time.perf_counter(), 0, float("nan")
        if self.config.train.checkpoint:
            self._load_dense(Path(self.config.train.checkpoint).expanduser())
        else:
            epochs, train_loss = self.config.train.epochs, self._train(self.config.train, "dense training")
        if self.config.pruning.std is StdSource.dense:  # the std every pruning step multiplies, fixed from here on
            self.dense_std = {name: surviving_std(weight, self.masks[name]) for name, weight in self.weights.items()}
        if self.plan.auto is not None:
            self.auto.dense_val_top1, self.auto.layer_budget = self._validation_top1(), self.plan.auto.layer_budget
        self.store.save_checkpoint("dense", self.model, 0, self.masks)
        self._record(0, "train", epochs, start, train_loss)

    def prune(self, iteration: int, plan: IterationPlan) -> None:
        """Phase 2: shrink the mask of each layer this iteration prunes, by the paper's rule (pruning.step)."""
        start = time.perf_counter()
        if self.plan.auto is not None:
            plan = self._choose(iteration, plan)
            if not plan.pruned:
                return
        dense_std = self.dense_std if self.config.pruning.std is StdSource.dense else None
        self.masks, pruned = prune_step(self.weights, self.masks, plan.pruned, dense_std)
        for name, layer in pruned.items():
            if layer.capped:
                log.warning(
                    f"iteration {iteration}: pruning would remove every weight of {name} (threshold "
                    f"{layer.threshold:.4g}); capped: each of its output units keeps its largest weight "
                    f"({layer.kept} kept)"
                )
        self.shard.broadcast_(list(self.masks.values()))  # rank 0's masks everywhere, whatever ties did elsewhere
        self._masked().mask_weights()
        self.shard.check_identical(list(self.weights.values()), "pruned weights")
        self._record(iteration, "prune", 0, start, float("nan"), pruned)

    def retrain(self, iteration: int, plan: IterationPlan) -> None:
        """Phase 3: retrain the survivors from their current values, dropout rescaled to the layers' sparsity."""
        start = time.perf_counter()
        self._rescale_dropout()
        with frozen(self.layers.values(), plan.freeze):
            train_loss = self._train(self.config.retrain, f"retraining {iteration}")
        self._record(iteration, "retrain", self.config.retrain.epochs, start, train_loss)
        self.store.save_checkpoint(f"iteration_{iteration}", self.model, iteration, self.masks)
        if self.plan.auto is not None:
            self._keep_within_budget(iteration)

    def quantize(self) -> None:
        """Phase 4 (Deep Compression): each layer's survivors share 2^bits - 1 values (k-means), then the shared
        values are fine-tuned with the masks fixed. A resumed run has its clusters from its state."""
        start, settings, iteration = time.perf_counter(), self.config.quantize, self.current[1]
        if not self.codebooks:
            for name, bits in self.plan.quantize_bits.items():
                codebook = quantize_layer(self.weights[name], self.masks[name], bits, settings.kmeans_iterations)
                self.codebooks[name] = codebook
                with torch.no_grad():
                    self.weights[name].copy_(codebook.weight())
            # rank 0's clusters everywhere: k-means sums in a different order on each GPU (atomic adds)
            books = self.codebooks.values()
            self.shard.broadcast_([*self.weights.values(), *(book.assignments for book in books)])
        self._rescale_dropout()  # the kept model's rates, also after a resume or a pruning=auto rollback
        with SharedGradients(self.weights, self.codebooks):
            train_loss = self._train(settings, "quantized fine-tuning") if settings.epochs else float("nan")
        self._record(iteration, "quantize", settings.epochs, start, train_loss, bits=self.plan.quantize_bits)
        self.store.save_checkpoint("quantized", self.model, iteration, self.masks)

    def _rescale_dropout(self) -> None:
        """Dropout in front of each pruned layer at the paper's D_r = D_o sqrt(C_r / C_o) for its current mask."""
        for name, path in self.plan.spec.dropouts.items():
            mask = self.masks[name]
            dropout = self.model.get_submodule(path)
            dropout.p = rescaled_dropout(self.dropout_rates[name], mask.numel(), int(mask.sum()))

    def _run_step(self, index: int, phase: str, action: Callable[[], None]) -> None:
        """Run step `index` (0: dense training, then prune and retrain per iteration, then quantization) unless a
        resumed run has done it already, then checkpoint the state. A stopped pruning=auto run prunes no more."""
        if index < self.step or (self.auto.stopped and phase in ("prune", "retrain")):
            return
        if self.stop_requested():
            raise StopRequested
        self.current = (phase, self._iteration_of(index, phase))
        action()
        self.step, self.phase_progress = index + 1, PhaseProgress()
        self._save_state()

    def _iteration_of(self, index: int, phase: str) -> int:
        """The iteration a step's rows carry: its own, and for quantization that of the model it quantizes."""
        if phase != "quantize":
            return (index + 1) // 2
        return self.auto.accepted if self.plan.auto is not None else len(self.plan.iterations)

    def _masked(self) -> MaskedWeights:
        return MaskedWeights(list(self.weights.values()), [self.masks[name] for name in self.weights])

    def _train(self, phase: PhaseConfig, description: str) -> float:
        step, iteration = self.current

        def checkpoint_epoch(progress: PhaseProgress, stats) -> None:
            self.recorder.epoch(iteration, step, stats, description, phase.epochs)
            self.phase_progress = progress
            self._save_state()

        try:
            return train_phase(
                self.shard.wrap(self.train_model, self.policy.device), self.data.train, phase, self._masked(),
                self.generator, description, self.phase_progress, checkpoint_epoch, self.stop_requested, self.shard,
                partial(self.policy.autocast, phase.precision),
            )  # fmt: skip
        except NonFiniteLoss as fault:
            kept = f"; completed epochs are kept in {self.store.state_path}" if self.store.state_path.is_file() else ""
            raise UserError(
                f"training loss became NaN or infinite in iteration {iteration} ({description}), epoch {fault.epoch}: "
                f"lower the learning rate or the weight decay and run again{kept}"
            ) from fault

    def _load_dense(self, path: Path) -> None:
        """Load a trained model; its exact zeros count as pruned (continuing from a pruned model)."""
        state, _ = load_checkpoint(path)
        mismatch = state_dict_mismatch(self.model.state_dict(), state)
        if mismatch:
            raise UserError(f"checkpoint {path} does not fit model={self.config.model.name}: {mismatch}")
        self.model.load_state_dict(state)
        self.masks = {name: weight.detach() != 0 for name, weight in self.weights.items()}

    def _save_state(self) -> None:
        self.store.save_state(
            {
                "step": self.step, "phase": asdict(self.phase_progress), "model": self.model.state_dict(),
                "masks": self.masks, "dense_std": self.dense_std, "rows": self.recorder.rows(),
                "auto": asdict(self.auto), "codebooks": {
                    name: {"centroids": book.centroids, "assignments": book.assignments.to(torch.uint8)}
                    for name, book in self.codebooks.items()
                },
                "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
            }
        )  # fmt: skip

    def _restore(self) -> dict[str, int]:
        """Load `last.pt` into this run; return how many rows of each CSV it had written."""
        state = self.store.load_state()
        self.model.load_state_dict(state["model"])
        self.masks = {name: mask.to(self.policy.device) for name, mask in state["masks"].items()}
        check_restored_masks(self.weights, self.masks, self.store.state_path)
        self.dense_std, self.step = state["dense_std"], state["step"]
        self.phase_progress = PhaseProgress(**state["phase"])
        self.auto = AutoProgress(**state["auto"])
        self.codebooks = {
            name: Codebook(book["centroids"].to(self.policy.device), book["assignments"].to(self.policy.device).long())
            for name, book in state.get("codebooks", {}).items()
        }  # fmt: skip
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        return state["rows"]

    def _validation_top1(self) -> float:
        """Rank 0's validation top-1 on every process, so that all take the same pruning=auto decisions."""
        top1 = evaluate(self.model, self.data.val, self.config.dataset.eval_batch_size).top1
        return self._agreed({"top1": top1})["top1"]

    def _agreed(self, values: dict[str, float]) -> dict[str, float]:
        """Rank 0's `values` on every process (kernels chosen per GPU can tip a number at a threshold)."""
        carrier = torch.tensor(list(values.values()), dtype=torch.float64, device=self.policy.device)
        self.shard.broadcast_([carrier])
        return dict(zip(values, carrier.tolist(), strict=True))

    def _choose(self, iteration: int, plan: IterationPlan) -> IterationPlan:
        """pruning=auto: each layer's sensitivity for this iteration, chosen on the validation split; none left to
        choose stops the run at the last iteration within the budget. The step just rolled back is never tried
        again: from the same model it makes the same masks, and retraining them again would only fish for a luckier
        validation score; the layer budget shrinks until the choice differs."""
        auto, plan_auto = self.auto, self.plan.auto
        for _ in range(MAX_SHRINKS):
            chosen = self._sensitivities_within(auto.layer_budget)
            if chosen != auto.rejected:
                break
            auto.layer_budget *= plan_auto.backoff
        else:
            chosen = {}
        auto.trying = chosen
        if not chosen:
            auto.stopped = True
            log.info(f"iteration {iteration}: no layer can be pruned within the budget; model.pt is iteration "
                     f"{auto.accepted}'s")  # fmt: skip
        else:
            log.info(f"iteration {iteration}: sensitivities chosen on the validation split: {chosen}")
        return IterationPlan({name: LayerStep(LayerTarget(sensitivity=s)) for name, s in chosen.items()}, plan.freeze)

    def _sensitivities_within(self, layer_budget: float) -> dict[str, float]:
        """The sensitivity analysis's choice at `layer_budget`, rank 0's on every process."""
        chosen = choose_sensitivities(
            self.model, self.weights, self.masks, self.data.val, self.plan.auto.levels, layer_budget,
            self.config.dataset.eval_batch_size,
        )  # fmt: skip
        levels = self._agreed({name: chosen.get(name, math.nan) for name in self.weights})
        return {name: level for name, level in levels.items() if not math.isnan(level)}

    def _keep_within_budget(self, iteration: int) -> None:
        """pruning=auto: keep the retrained model (and let the next step grow), or roll back to the last one within
        the budget and go on from it with a smaller step; `patience` rollbacks in a row stop the search."""
        auto, plan = self.auto, self.plan.auto
        top1, limit = self._validation_top1(), auto.dense_val_top1 - plan.budget
        if plan.within_budget(top1, auto.dense_val_top1):  # kept: the steps grow back towards the plan's layer budget
            auto.accepted, auto.rollbacks, auto.rejected = iteration, 0, {}
            auto.layer_budget = min(plan.layer_budget, auto.layer_budget / plan.backoff)
            return
        auto.rollbacks, auto.rejected = auto.rollbacks + 1, auto.trying
        auto.stopped = auto.rollbacks >= plan.patience
        auto.layer_budget *= plan.backoff
        then = "stopped" if auto.stopped else f"goes on with a layer budget of {100 * auto.layer_budget:.3g} points"
        log.warning(
            f"iteration {iteration}: validation top-1 {top1:.2%} is past the budget ({limit:.2%}); rolled back to "
            f"iteration {auto.accepted} (model.pt unless a later one is kept); the search {then}"
        )
        name = "dense" if auto.accepted == 0 else f"iteration_{auto.accepted}"
        state, extras = load_checkpoint(self.store.out_dir / CHECKPOINTS / f"{name}.pt")
        self.model.load_state_dict(state)
        self.masks = {layer: mask.to(self.policy.device) for layer, mask in extras["masks"].items()}
        self._record(iteration, "rollback", 0, time.perf_counter(), float("nan"))

    def _record(
        self, iteration: int, phase: str, epochs: int, start: float, train_loss: float, pruned=None, bits=None
    ) -> None:
        """Check the masks hold, then evaluate and log this phase's rows (rank 0)."""
        check_masks(self.weights, self.masks, "the model")
        key = {"iteration": iteration, "phase": phase}
        self.recorder.phase(self.model, key, epochs, start, train_loss, pruned, bits)


def check_no_validation_leak(path: Path, trained_on: TrainedOn, validating: TrainingData) -> None:
    """Refuse a model trained on images this run holds out for validation; warn when the file cannot tell."""
    if trained_on is None:
        log.warning(
            f"{path} does not record what it was trained on (a foreign state_dict?): if its training data included "
            f"the {validating.val_split} images held out here, validation accuracy is optimistic"
        )
        return
    for seen in trained_on:
        if seen.overlaps_validation_of(validating):
            raise UserError(
                f"checkpoint {path} was trained on {seen.dataset} with dataset.val_split={seen.val_split}, so it has "
                f"seen images of this run's validation split (dataset.val_split={validating.val_split}): train the "
                f"dense model with dataset.val_split={validating.val_split} (or more), or leave out train.checkpoint"
            )


def training_data(config: RunConfig, data: ImageData, analysis: bool) -> TrainedOn:
    """Every data set the run's weights will have been trained on: this run's training split, after those of the
    `train.checkpoint` it starts from (unknown if that file does not say). A sensitivity analysis that starts from a
    checkpoint refuses it here when it has seen the validation images, before anything is written."""
    images = len(data.train) + (len(data.val) if data.val is not None else 0)
    own = TrainingData(config.dataset.name, images, config.dataset.val_split, VALIDATION_SPLIT_SEED)
    if not config.train.checkpoint:
        return [own]
    path = Path(config.train.checkpoint).expanduser()
    inherited = checkpoint_training_data(path, load_checkpoint(path)[1])
    if analysis:  # which trains nothing more when it starts from a checkpoint
        check_no_validation_leak(path, inherited, own)
        return inherited
    return training_history(inherited, own)


def run(
    config: RunConfig,
    out_dir: Path,
    stop_requested: Callable[[], bool] = lambda: False,
    shard: Shard = SINGLE_PROCESS,
) -> pd.DataFrame | None:
    """Run (or resume) the task into `out_dir`; return metrics.csv (None on ranks other than 0).

    Bad input fails here, before any training.
    """
    plan = plan_run(config, shard.world_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    convolutional = "conv" in plan.spec.layer_kinds().values()
    policy = device_policy(config.device.name, config.deterministic, shard, convolutional)
    policy.apply()
    torch.manual_seed(config.seed)
    with process_group(shard, policy.device) as shard:
        with shard.main_first():  # a download into dataset.root happens once
            data = load_data(config.dataset, plan.spec.input_shape, config.seed).to(policy.device)
        trained_on = training_data(config, data, plan.analysis is not None)
        experiment = PruningRun(
            config, plan, data, policy, RunStore(out_dir, fingerprint(config), trained_on, shard.is_main), shard
        )
        if shard.is_main:
            phases = {"train": config.train.precision, "retrain": config.retrain.precision}
            if plan.quantize_bits is not None:
                phases["quantize"] = config.quantize.precision
            write_run_record(out_dir, config, trained_on, policy.describe(phases))
        experiment.stop_requested = lambda: shard.any(stop_requested())
        experiment.execute()
    if not shard.is_main:
        return None
    if plan.analysis is not None:
        write_sensitivity(out_dir / SENSITIVITY.file, experiment, plan.analysis, data.val)
    return pd.read_csv(out_dir / METRICS.file)


def write_sensitivity(path: Path, experiment: PruningRun, analysis: AnalysisPlan, validation: TensorSplit) -> None:
    """The sensitivity analysis of the run's trained model on the validation split, row by row into `path`."""
    csv_log = CsvLog(path, SENSITIVITY.columns)
    weights = {name: experiment.weights[name] for name in analysis.layers}
    batch_size = experiment.config.dataset.eval_batch_size
    masks = {name: experiment.masks[name] for name in analysis.layers}
    rows = layer_sensitivity(experiment.model, weights, masks, validation, analysis.levels, analysis.kind, batch_size)
    for row in rows:
        csv_log.write([row])
