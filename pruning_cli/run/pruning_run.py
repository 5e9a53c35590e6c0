"""The paper's method end to end: train (or load) the dense model, then prune -> retrain, iterated."""

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from pruning_cli.config.schema import PhaseConfig, RunConfig
from pruning_cli.data import ImageData, TensorSplit, decoding, load_data
from pruning_cli.data.tensors import VALIDATION_SPLIT_SEED
from pruning_cli.errors import UserError
from pruning_cli.models import ModelSpec
from pruning_cli.models.pretrained import build_model
from pruning_cli.parallel.shard import SINGLE_PROCESS, Shard, process_group
from pruning_cli.pruning.dropout_rate import rescaled_dropout
from pruning_cli.pruning.masks import full_masks
from pruning_cli.pruning.step import LayerPruned
from pruning_cli.quantize.kmeans import Codebook, quantize_layers
from pruning_cli.quantize.shared import SharedGradients
from pruning_cli.records.contract import (
    DENSE_CHECKPOINT,
    METRICS,
    MODEL_FILE,
    SENSITIVITY,
    TrainedOn,
    TrainingData,
    checkpoint_training_data,
    fingerprint,
    training_history,
    write_run_record,
)
from pruning_cli.records.files import CsvLog, load_checkpoint, state_dict_mismatch
from pruning_cli.run.plan import AnalysisPlan, RunPlan, RunSettings, plan_run
from pruning_cli.run.recorder import Recorder, Tracker, weights_of
from pruning_cli.run.runtime import DevicePolicy, device_policy
from pruning_cli.run.sensitivity import layer_sensitivity
from pruning_cli.run.state import RunStore, check_masks, check_restored_masks
from pruning_cli.training.freeze import frozen
from pruning_cli.training.loop import (
    Distillation,
    MaskedWeights,
    NonFiniteLoss,
    PhaseCallbacks,
    PhaseExecution,
    PhaseProgress,
    StopRequested,
    correct_predictions,
    train_phase,
)
from pruning_cli.training.rate_dropout import use_rate_dropouts

log = logging.getLogger(__name__)


@dataclass
class RunProgress:
    """Where a run stands, saved with its state: the phases done (0: dense training, then prune and retrain per
    iteration, then quantization), the current phase's own progress, the phase running and its iteration, the
    iteration whose model model.pt will hold, and whether the policy has stopped pruning."""

    phases_done: int = 0
    phase: PhaseProgress = field(default_factory=PhaseProgress)
    current: tuple[str, int] = ("train", 0)
    kept_iteration: int = 0
    stopped: bool = False

    def state_dict(self, policy: dict) -> dict:
        """The progress's keys of the run's state file (checkpoints/last.pt), with the policy's own state."""
        pruning = {"policy": policy, "kept_iteration": self.kept_iteration, "stopped": self.stopped}
        return {"step": self.phases_done, "phase": asdict(self.phase), "pruning": pruning}

    @classmethod
    def from_state(cls, state: dict) -> "RunProgress":
        pruning, phase = state["pruning"], PhaseProgress(**state["phase"])
        return cls(state["step"], phase, kept_iteration=pruning["kept_iteration"], stopped=pruning["stopped"])


class PruningRun:
    """A run's model, masks and progress, and its phases: train, prune -> retrain as its pruning policy decides (the
    run is the policy's RunView), then trained quantization if asked for. After every epoch and step the state, the
    policy's too, goes to `checkpoints/last.pt`: a killed run started again continues from its last epoch with the
    numbers of an uninterrupted one. Under torchrun every process steps on identical weights; rank 0 writes."""

    def __init__(
        self, plan: RunPlan, data: ImageData, runtime: DevicePolicy, store: RunStore, shard: Shard = SINGLE_PROCESS
    ) -> None:
        self.settings, self.plan, self.data, self.shard = plan.settings, plan, data, shard
        self.runtime, self.store, self.pruning = runtime, store, plan.policy
        spec, settings = plan.spec, plan.settings
        self.model = runtime.place(run_model(spec, settings, data.num_classes))
        # Compiled once for every phase (a wrapper per phase would recompile), sharing the model's parameters.
        self.train_model = torch.compile(self.model) if settings.compile else self.model
        self.layers = spec.prunable(self.model)
        self.weights, self.masks = weights_of(self.layers), full_masks(weights_of(self.layers))
        self.dropout_rates = {name: self.model.get_submodule(path).p for name, path in spec.dropouts.items()}
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.progress, self.codebooks = RunProgress(), dict[str, Codebook]()  # codebooks: trained quantization's
        self.stop_requested: Callable[[], bool] = lambda: False
        rows = self._restore() if settings.resume and store.state_path.is_file() else None
        done, epochs = self.progress.phases_done, self.progress.phase.epochs_done
        where = f"resume points (is {store.state_path} on a disk every process sees?)"
        shard.check_identical([torch.tensor([done, epochs])], where)
        shard.reseed(settings.seed, 1009 * done + epochs)  # where a resumed run picks up
        positions = spec.output_positions(self.model)
        self.recorder = Recorder(
            store.out_dir, self.layers, positions, data, settings.eval_batch_size, shard.is_main, rows
        )

    def execute(self) -> None:
        """Phase 1, then phases 2 and 3 once per iteration, then trained quantization if asked for; the phases a
        resumed run has done are skipped."""
        self._run_phase(0, "train", self.train_dense)
        for iteration in range(1, self.pruning.iterations + 1):
            self._run_phase(2 * iteration - 1, "prune", partial(self.prune, iteration))
            self._run_phase(2 * iteration, "retrain", partial(self.retrain, iteration))
        if self.plan.quantize_bits is not None:
            self._run_phase(2 * self.pruning.iterations + 1, "quantize", self.quantize)
        if self.stop_requested():  # also makes every process wait here for rank 0's last evaluation
            raise StopRequested
        self.shard.check_identical(list(self.model.parameters()), "final weights")
        self.store.save_model(self.model, self.plan.spec.layers, self.masks)
        log_compilations(self.settings.compile)

    def train_dense(self) -> None:
        """Phase 1: train the dense model, or load it from `train.checkpoint` and only evaluate it."""
        start, epochs, train_loss = time.perf_counter(), 0, float("nan")
        train = self.settings.train
        if train.checkpoint:  # its exact zeros count as pruned (continuing from a pruned model)
            load_trained(self.model, Path(train.checkpoint).expanduser(), self.settings.model_name)
            self.masks = {name: weight.detach() != 0 for name, weight in self.weights.items()}
        else:
            epochs, train_loss = train.epochs, self._train(train, "dense training")
        self.store.save_checkpoint("dense", self.model, 0, self.masks)
        self._record(0, "train", epochs, start, train_loss)

    def prune(self, iteration: int) -> None:
        """Phase 2: the masks the policy chooses for this iteration; none left to choose ends the pruning."""
        start, step = time.perf_counter(), self.pruning.prune(iteration, self)
        if step is None:
            self.progress.stopped = True
            return
        warn_capped(iteration, step.records)
        self._set_masks(step.masks)
        self.shard.check_identical(list(self.weights.values()), "pruned weights")
        self._record(iteration, "prune", 0, start, float("nan"), step.records)

    def retrain(self, iteration: int) -> None:
        """Phase 3: retrain the survivors from their current values, dropout rescaled to the layers' sparsity (and
        masks raised during training if the policy prunes gradually), then the policy's verdict on the result."""
        start = time.perf_counter()
        self._rescale_dropout()
        with frozen(self.layers.values(), self.pruning.freeze(iteration)):
            train_loss = self._train(self.settings.retrain, f"retraining {iteration}", iteration)
        self.store.save_checkpoint(f"iteration_{iteration}", self.model, iteration, self.masks)
        verdict = self.pruning.verdict(iteration, self)
        self._record(iteration, "retrain", self.settings.retrain.epochs, start, train_loss, verdict=verdict.figures)
        self.progress.kept_iteration, self.progress.stopped = verdict.kept(iteration), verdict.stop
        if verdict.rollback_to is not None:
            state, masks = self.store.load_iteration(verdict.rollback_to)
            self.model.load_state_dict(state)
            self.masks = {layer: mask.to(self.runtime.device) for layer, mask in masks.items()}
            self._record(iteration, "rollback", 0, time.perf_counter(), float("nan"))

    def quantize(self) -> None:
        """Phase 4 (Deep Compression): each layer's survivors share 2^bits - 1 values (k-means), then the shared
        values are fine-tuned with the masks fixed. A resumed run has its clusters from its state."""
        start, settings, iteration = time.perf_counter(), self.settings.quantize, self.progress.current[1]
        if not self.codebooks:
            bits = self.plan.quantize_bits
            self.codebooks = quantize_layers(self.weights, self.masks, bits, settings.kmeans_iterations)
            # rank 0's clusters everywhere: k-means sums in a different order on each GPU (atomic adds)
            self.shard.broadcast_([*self.weights.values(), *(book.assignments for book in self.codebooks.values())])
        self._rescale_dropout()  # the kept model's rates, also after a resume or a rollback
        with SharedGradients(self.weights, self.codebooks):
            train_loss = self._train(settings, "quantized fine-tuning") if settings.epochs else float("nan")
        self._record(iteration, "quantize", settings.epochs, start, train_loss, bits=self.plan.quantize_bits)
        self.store.save_checkpoint("quantized", self.model, iteration, self.masks)

    def validation_correct(self) -> Tensor:
        """Which validation images the model gets right (RunView); rank 0's on every process, so that all take the
        same decisions."""
        correct = correct_predictions(self.model, self.data.val, self.settings.eval_batch_size)
        self.shard.broadcast_([correct])
        return correct.cpu()

    def _set_masks(self, masks: Mapping[str, Tensor]) -> None:
        """Take new masks (rank 0's everywhere, whatever ties did elsewhere) and zero what they prune."""
        self.masks = dict(masks)
        self.shard.broadcast_(list(self.masks.values()))
        self._masked().mask_weights()

    def _rescale_dropout(self) -> None:
        rescale_dropouts(self.model, self.plan.spec.dropouts, self.dropout_rates, self.masks)

    def _run_phase(self, index: int, phase: str, action: Callable[[], None]) -> None:
        """Run phase `index` (0: dense training, then prune and retrain per iteration, then quantization) unless a
        resumed run has done it already, then checkpoint the state. A run whose policy stopped prunes no more."""
        progress = self.progress
        if index < progress.phases_done or (progress.stopped and phase in ("prune", "retrain")):
            return
        if self.stop_requested():
            raise StopRequested
        progress.current = (phase, progress.kept_iteration if phase == "quantize" else (index + 1) // 2)
        action()
        progress.phases_done, progress.phase = index + 1, PhaseProgress()
        self._save_state()

    def _masked(self) -> MaskedWeights:
        return MaskedWeights(list(self.weights.values()), [self.masks[name] for name in self.weights])

    def _train(self, phase: PhaseConfig, description: str, retraining: int | None = None) -> float:
        """Train one phase; a retraining (`retraining`: its iteration) lets the policy raise masks at every step and
        distils from the dense model when retrain.distill.weight > 0."""
        kind, iteration = self.progress.current
        masked = self._masked()

        def checkpoint_epoch(progress: PhaseProgress, stats) -> None:
            self.recorder.epoch(iteration, kind, stats, description, phase.epochs)
            self.progress.phase = progress
            self._save_state()

        def raise_masks(done: int, steps: int) -> None:
            masks = self.pruning.during_retraining(retraining, done, steps, self)
            if masks is not None:
                self._set_masks(masks)
                masked.reset(list(self.weights.values()), [self.masks[name] for name in self.weights])
                self._rescale_dropout()

        distill = None
        if retraining and self.settings.retrain.distill.weight:
            distill = dense_teacher(self.plan, self.data.num_classes, self.store.out_dir, self.runtime)
        autocast = partial(self.runtime.autocast, phase.precision)
        execution = PhaseExecution(
            self.generator, description, self.progress.phase, self.shard, autocast, distill, self.settings.optimization
        )
        callbacks = PhaseCallbacks(checkpoint_epoch, self.stop_requested, raise_masks if retraining else None)
        model = self.shard.wrap(self.train_model, self.runtime.device)
        try:
            return train_phase(model, self.data.train, phase, masked, execution, callbacks)
        except NonFiniteLoss as fault:
            raise diverged(fault, iteration, description, self.store.state_path) from fault

    def _save_state(self) -> None:
        codebooks = {name: book.state() for name, book in self.codebooks.items()}
        state = {"model": self.model.state_dict(), "masks": self.masks, "rows": self.recorder.rows()}
        progress = self.progress.state_dict(self.pruning.state_dict())
        self.store.save_state({**state, **progress, "codebooks": codebooks}, self.generator)

    def _restore(self) -> dict[str, int]:
        """Load `last.pt` into this run; return how many rows of each CSV it had written."""
        state = self.store.load_state(self.generator)
        self.model.load_state_dict(state["model"])
        self.masks = {name: mask.to(self.runtime.device) for name, mask in state["masks"].items()}
        check_restored_masks(self.weights, self.masks, self.store.state_path)
        self.progress = RunProgress.from_state(state)
        self.pruning.load_state_dict(state["pruning"]["policy"])
        books = state["codebooks"].items()
        self.codebooks = {name: Codebook.from_state(book, self.runtime.device) for name, book in books}
        return state["rows"]

    def _record(
        self,
        iteration: int,
        phase: str,
        epochs: int,
        start: float,
        train_loss: float,
        pruned=None,
        bits=None,
        verdict: Mapping[str, float | int | str] | None = None,
    ) -> None:
        """Check the masks hold, then evaluate and log this phase's rows (rank 0)."""
        check_masks(self.weights, self.masks, "the model")
        key = {"iteration": iteration, "phase": phase}
        self.recorder.phase(self.model, key, epochs, start, train_loss, pruned, bits, verdict)


def dense_teacher(plan: RunPlan, num_classes: int, out_dir: Path, runtime: DevicePolicy) -> Distillation:
    """The dense model (checkpoints/dense.pt) as the teacher of a retraining."""
    settings, name = plan.settings.retrain.distill, plan.settings.model_name
    teacher = build_model(plan.spec, name, num_classes, None)
    load_trained(teacher, out_dir / DENSE_CHECKPOINT, name)
    return Distillation(runtime.place(teacher).eval(), settings.weight, settings.temperature)


def log_compilations(compiled: bool) -> None:
    """With compile=true, how many graphs torch.compile built over the run (one per phase kind at most)."""
    if compiled:
        from torch._dynamo.utils import counters  # imported here: a second of every command's start otherwise

        log.info(f"torch.compile built {counters['stats']['unique_graphs']} graph(s) in this process")


def run_model(spec: ModelSpec, settings: RunSettings, num_classes: int) -> nn.Module:
    """The run's model; compiled, its dropouts hold their rates as tensors, so that a rescaled rate does not
    recompile the training step."""
    model = build_model(spec, settings.model_name, num_classes, settings.model_weights)
    if settings.discovered:  # a registered network is built for its input, with the classes
        check_outputs(model, spec.input_shape, num_classes, settings.model_name)
    if settings.compile:
        use_rate_dropouts(model, list(spec.dropouts.values()))
    return model


def check_outputs(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, name: str) -> None:
    """A one-line error, before any training, when a discovered model cannot take the input or does not give one
    logit per class of the data."""
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(2, *input_shape))
    except Exception as error:  # a shape the model cannot take, a module of the user's that raises
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"model {name} cannot take a batch of {list(input_shape)} images (model.input_shape): {reason}"
        ) from error
    if not isinstance(logits, Tensor) or tuple(logits.shape) != (2, num_classes):
        shape = list(logits.shape[1:]) if isinstance(logits, Tensor) else type(logits).__name__
        raise UserError(
            f"model {name} outputs {shape} per image, but the data set has {num_classes} classes: give it one logit "
            "per class (e.g. through model.args)"
        )


def rescale_dropouts(
    model: nn.Module, dropouts: Mapping[str, str], rates: Mapping[str, float], masks: Mapping[str, Tensor]
) -> None:
    """Dropout in front of each pruned layer at the paper's D_r = D_o sqrt(C_r / C_o) for its current mask."""
    for name, path in dropouts.items():
        model.get_submodule(path).p = rescaled_dropout(
            rates[name], masks[name].numel(), int(torch.count_nonzero(masks[name]))
        )


def diverged(fault: NonFiniteLoss, iteration: int, description: str, state_path: Path) -> UserError:
    """The one-line error of a phase whose loss became NaN or infinite."""
    kept = f"; completed epochs are kept in {state_path}" if state_path.is_file() else ""
    return UserError(
        f"training loss became NaN or infinite in iteration {iteration} ({description}), epoch {fault.epoch}: "
        f"lower the learning rate or the weight decay and run again{kept}"
    )


def load_trained(model: nn.Module, path: Path, model_name: str) -> None:
    """Load a trained model's weights from `path`, or a one-line error when they do not fit."""
    state, _ = load_checkpoint(path)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise UserError(f"checkpoint {path} does not fit model={model_name}: {mismatch}")
    model.load_state_dict(state)


def warn_capped(iteration: int, records: Mapping[str, LayerPruned]) -> None:
    """Say which layers a step would have emptied, and what the cap kept instead."""
    for name, layer in records.items():
        if layer.capped:
            log.warning(
                f"iteration {iteration}: pruning would remove every weight of {name} (threshold {layer.threshold:.4g});"
                f" capped: each of its output units keeps its largest weight ({layer.kept} kept)"
            )


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
                f"seen images of this run's validation split (dataset.val_split={validating.val_split}"
                f"{_and_confirm(validating)}): train the dense model with dataset.val_split={validating.val_split}"
                f"{_and_confirm(validating)} (or more), or leave out train.checkpoint"
            )


def _and_confirm(data: TrainingData) -> str:
    return f" dataset.confirm_split={data.confirm_split}" if data.confirm_split else ""


def training_data(config: RunConfig, data: ImageData, plan: RunPlan) -> TrainedOn:
    """Every data set the run's weights will have been trained on: this run's training split, after those of the
    `train.checkpoint` it starts from (unknown if that file does not say). Refused here, before anything is written:
    a checkpoint that does not fit the model, and, for a run that makes a choice on the validation split (a
    sensitivity analysis, a policy that reads it), one that has seen those images."""
    images = sum(len(split) for split in (data.train, data.val, data.confirm) if split is not None)
    held_out = config.dataset.val_split, VALIDATION_SPLIT_SEED, config.dataset.confirm_split
    own = TrainingData(config.dataset.name, images, *held_out)
    chooses = plan.analysis is not None or plan.policy.reads_validation or config.dataset.confirm_split > 0
    if config.model.weights and chooses and not config.train.checkpoint:
        log.warning(
            f"model.weights={config.model.weights} were trained on all of their data set's training images, so the "
            f"{config.dataset.val_split} held out here were seen in training: validation accuracy is optimistic"
        )
    if not config.train.checkpoint:
        return [own]
    path = Path(config.train.checkpoint).expanduser()
    state, extras = load_checkpoint(path)
    with torch.device("meta"):
        mismatch = state_dict_mismatch(plan.spec.build(data.num_classes).state_dict(), state)
    if mismatch:
        raise UserError(f"checkpoint {path} does not fit model={plan.settings.model_name}: {mismatch}")
    inherited = checkpoint_training_data(path, extras)
    if chooses:
        check_no_validation_leak(path, inherited, own)
    # a sensitivity analysis trains nothing more when it starts from a checkpoint
    return inherited if plan.analysis is not None else training_history(inherited, own)


@contextmanager
def open_run(
    config: RunConfig,
    out_dir: Path,
    shard: Shard = SINGLE_PROCESS,
    adjust_data: Callable[[ImageData], ImageData] = lambda data: data,
    adjust_runtime: Callable[[DevicePolicy], DevicePolicy] = lambda runtime: runtime,
    tracker: Tracker | None = None,
) -> Iterator[PruningRun]:
    """The run of `config` in `out_dir`, ready to execute, every check that can refuse it done before its first file
    (`run.json` last): what `run` executes and the tests build (`adjust_*`: a test's altered data or device policy;
    `tracker`: where the rows go besides the CSVs, closed however the run ends)."""
    plan = plan_run(config, shard.world_size)
    convolutional = "conv" in plan.spec.layer_kinds().values()
    runtime = adjust_runtime(device_policy(config.device.name, config.deterministic, shard, convolutional))
    runtime.apply()
    torch.manual_seed(config.seed)
    with process_group(shard, runtime.device) as shard:
        with shard.main_first():  # a download into dataset.root happens once
            on_gpu = runtime.device.type == "cuda"  # image folders: decoded there (data/decode.py)
            data = adjust_data(load_data(config.dataset, plan.spec.input_shape, config.seed, on_gpu)).to(runtime.device)
        trained_on = training_data(config, data, plan)
        out_dir.mkdir(parents=True, exist_ok=True)
        store = RunStore(out_dir, fingerprint(config), trained_on, shard.is_main)
        experiment = PruningRun(plan, data, runtime, store, shard)
        if shard.is_main:
            phases = {"train": config.train.precision, "retrain": config.retrain.precision}
            phases |= {"quantize": config.quantize.precision} if plan.quantize_bits is not None else {}
            described = {**runtime.describe(phases), "decode": decoding(data)}
            if data.skipped_images is not None:  # an image folder: its unreadable files left out
                described["skipped_images"] = data.skipped_images
            write_run_record(out_dir, config, trained_on, described)
        experiment.recorder.track(tracker)
        try:
            yield experiment
        finally:
            if tracker is not None:
                tracker.close()


def run(
    config: RunConfig,
    out_dir: Path,
    stop_requested: Callable[[], bool] = lambda: False,
    shard: Shard = SINGLE_PROCESS,
    tracker: Tracker | None = None,
) -> pd.DataFrame | None:
    """Run (or resume) the task into `out_dir`; return metrics.csv (None on ranks other than 0). `tracker` receives
    every CSV row too, and at the end the final figures, model.pt and metrics.csv.

    Bad input fails here, before any training and before the run writes its first file.
    """
    with open_run(config, out_dir, shard, tracker=tracker) as experiment:
        experiment.stop_requested = lambda: experiment.shard.any(stop_requested())
        experiment.execute()
        if not experiment.shard.is_main:
            return None
        if experiment.plan.analysis is not None:
            write_sensitivity(out_dir / SENSITIVITY.file, experiment, experiment.plan.analysis, experiment.data.val)
        metrics = pd.read_csv(out_dir / METRICS.file)
        if tracker is not None:
            tracker.finish(final_figures(metrics), [out_dir / MODEL_FILE, out_dir / METRICS.file])
    return metrics


def final_figures(metrics: pd.DataFrame) -> dict[str, float]:
    """The numbers of metrics.csv's last row (the model model.pt holds), for a tracker's summary of the run."""
    last = pd.to_numeric(metrics.iloc[-1], errors="coerce").dropna()
    return {column: float(value) for column, value in last.items()}


def write_sensitivity(path: Path, experiment: PruningRun, analysis: AnalysisPlan, validation: TensorSplit) -> None:
    """The sensitivity analysis of the run's trained model on the validation split, row by row into `path`."""
    csv_log = CsvLog(path, SENSITIVITY.columns)
    weights = {name: experiment.weights[name] for name in analysis.layers}
    batch_size = experiment.settings.eval_batch_size
    masks = {name: experiment.masks[name] for name in analysis.layers}
    rows = layer_sensitivity(experiment.model, weights, masks, validation, analysis.levels, analysis.kind, batch_size)
    for row in rows:
        csv_log.write([row])
