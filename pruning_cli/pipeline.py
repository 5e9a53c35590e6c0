"""The paper's method end to end: train (or load) the dense model, then prune -> retrain, iterated."""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from pruning_cli.artifacts import (
    EPOCHS_COLUMNS,
    LAYERS_COLUMNS,
    METRICS_COLUMNS,
    SENSITIVITY_COLUMNS,
    CsvLog,
    DiscardLog,
    load_model_state,
    save_atomic,
    state_dict_mismatch,
)
from pruning_cli.config import PhaseConfig, RunConfig, StdSource
from pruning_cli.data import ImageData, load_data
from pruning_cli.distributed import SINGLE_PROCESS, Shard, process_device, process_group
from pruning_cli.errors import UserError
from pruning_cli.models import ModelSpec, get_model_spec
from pruning_cli.models.pretrained import build_model
from pruning_cli.pruning.dropout import rescaled_dropout
from pruning_cli.pruning.masks import count_nonzero, full_masks, strongest_per_output, unmasked_layers
from pruning_cli.pruning.schedule import Iteration, pruning_schedule
from pruning_cli.pruning.stats import layer_stats
from pruning_cli.pruning.targets import LayerTarget, prune_layer, resolve_targets
from pruning_cli.sensitivity import check_levels, layer_sensitivity
from pruning_cli.training.activations import InputDensity
from pruning_cli.training.freeze import frozen
from pruning_cli.training.loop import (
    EpochStats,
    MaskedWeights,
    NonFiniteLoss,
    PhaseProgress,
    StopRequested,
    evaluate,
    train_phase,
)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but this machine has no usable CUDA device; use device=cpu or device=auto")
    return torch.device(name)


STATE_FILE = Path("checkpoints") / "last.pt"
log = logging.getLogger(__name__)


class PruningRun:
    """One run's state (model, masks, logs, progress) and its steps: train, then (prune, retrain) per iteration.

    After every epoch and every step the whole state goes to `checkpoints/last.pt` (atomically), so a run that
    is killed at any moment continues, when started again into the same directory, from its last completed
    epoch, with the same numbers it would have produced uninterrupted.

    With several processes (`shard`), every process runs every step on identical weights and masks; only rank 0
    evaluates and writes (the others log into DiscardLogs), and all of them read `last.pt` to resume.
    """

    def __init__(
        self,
        config: RunConfig,
        out_dir: Path,
        spec: ModelSpec,
        data: ImageData,
        device: torch.device,
        shard: Shard = SINGLE_PROCESS,
    ):
        self.config, self.out_dir, self.spec, self.data = config, out_dir, spec, data
        self.device, self.shard = device, shard
        self.model = build_model(spec, config.model.name, data.num_classes, config.model.weights).to(device)
        if device.type == "cuda":
            # NHWC convolutions are cuDNN's fast path (tensor cores); state_dict keys and values are unchanged.
            self.model = self.model.to(memory_format=torch.channels_last)
        # Compiled once and reused by every phase (a fresh wrapper per phase would recompile each time); the
        # compiled module shares the model's parameters, so masks and checkpoints see the same tensors.
        self.train_model = torch.compile(self.model) if config.compile else self.model
        self.weights = {name: layer.weight for name, layer in spec.prunable(self.model).items()}
        self.masks = full_masks(self.weights)
        self.positions = spec.output_positions(self.model)
        self.dropout_rates = {name: self.model.get_submodule(path).p for name, path in spec.dropouts.items()}
        self.dense_std: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(config.seed)
        iterations = range(1, config.pruning.iterations + 1)
        self.steps = [("train", 0)] + [(phase, i) for i in iterations for phase in ("prune", "retrain")]
        self.step, self.phase_progress = 0, PhaseProgress()
        self.stop_requested: Callable[[], bool] = lambda: False
        rows = self._restore() if config.resume and (out_dir / STATE_FILE).is_file() else None
        where = torch.tensor([self.step, self.phase_progress.epochs_done])
        shard.check_identical([where], f"resume points (is {out_dir / STATE_FILE} on a disk every process sees?)")
        if shard.rank > 0:
            # Own dropout draws per process (rank 0 keeps the seed's stream): the same stream everywhere would
            # give the k-th image of every process the same dropout mask.
            position = 1009 * self.step + self.phase_progress.epochs_done  # where a resumed run picks up
            torch.manual_seed(config.seed + 1_000_003 * shard.rank + position)
        log_class = CsvLog if shard.is_main else DiscardLog
        self.metrics = log_class(out_dir / "metrics.csv", METRICS_COLUMNS, rows and rows["metrics"])
        self.layers = log_class(out_dir / "layers.csv", LAYERS_COLUMNS, rows and rows["layers"])
        # A checkpoint from before epochs.csv existed resumes with a fresh epochs.csv.
        self.epochs = log_class(out_dir / "epochs.csv", EPOCHS_COLUMNS, rows and rows.get("epochs"))

    def execute(self, targets: dict[str, LayerTarget], plan: list[Iteration]) -> None:
        """Run every step not yet done, checkpointing after each; `plan[i - 1]` says what iteration i prunes."""
        while self.step < len(self.steps):
            phase, iteration = self.steps[self.step]
            if self.stop_requested():
                raise StopRequested
            if phase == "train":
                self.dense()
            elif phase == "prune":
                self.prune(iteration, targets, plan[iteration - 1])
            else:
                self.retrain(iteration, plan[iteration - 1])
            self.step, self.phase_progress = self.step + 1, PhaseProgress()
            self._save_state()
        if self.stop_requested():  # also makes every process wait here for rank 0's last evaluation
            raise StopRequested
        self.save_model()

    def dense(self) -> None:
        """Phase 1: train the dense model, or load it from `train.checkpoint` and only evaluate it."""
        start, epochs = time.perf_counter(), 0
        if self.config.train.checkpoint:
            self._load_dense(Path(self.config.train.checkpoint).expanduser())
            train_loss = float("nan")
        else:
            epochs = self.config.train.epochs
            train_loss = self._train(self.config.train, "dense training")
        self.dense_std = {name: weight.std().item() for name, weight in self.weights.items()}
        if self.shard.is_main:
            save_atomic({"model": self.model.state_dict(), "iteration": 0}, self.out_dir / "checkpoints" / "dense.pt")
        self._record(0, "train", epochs, start, train_loss)

    def prune(self, iteration: int, targets: dict[str, LayerTarget], plan: Iteration) -> None:
        """Phase 2: shrink the mask of each layer this iteration prunes (threshold = s x std, or the kept fraction
        its schedule reaches at this turn)."""
        start, pruning = time.perf_counter(), {}
        for name, target in targets.items():
            if name not in plan.pruned:
                continue
            weight, mask, turn = self.weights[name], self.masks[name], plan.pruned[name]
            std = self.dense_std[name] if self.config.pruning.std is StdSource.dense else weight[mask].std().item()
            new_mask, threshold = prune_layer(weight, mask, target, std, turn.step, turn.steps)
            if not new_mask.any():
                new_mask = strongest_per_output(weight, mask)
                log.warning(
                    f"iteration {iteration}: pruning would remove every weight of {name} (threshold {threshold:.4g}); "
                    f"capped: each of its output units keeps its largest weight ({int(new_mask.sum())} kept)"
                )
            self.masks[name] = new_mask
            pruning[name] = {"std": std, "threshold": threshold, "sensitivity": threshold / std if std else None}
        self.shard.broadcast_(list(self.masks.values()))  # rank 0's masks everywhere, whatever ties did elsewhere
        self._masked().mask_weights()
        self.shard.check_identical(list(self.weights.values()), "pruned weights")
        self._record(iteration, "prune", 0, start, float("nan"), pruning)

    def retrain(self, iteration: int, plan: Iteration) -> None:
        """Phase 3: retrain the survivors from their current values, dropout rescaled to the layers' sparsity."""
        start = time.perf_counter()
        for name, path in self.spec.dropouts.items():
            mask = self.masks[name]
            dropout = self.model.get_submodule(path)
            dropout.p = rescaled_dropout(self.dropout_rates[name], mask.numel(), int(mask.sum()))
        with frozen(self.spec.prunable(self.model).values(), plan.freeze):
            train_loss = self._train(self.config.retrain, f"retraining {iteration}")
        self._record(iteration, "retrain", self.config.retrain.epochs, start, train_loss)
        if self.shard.is_main:
            checkpoint = {"model": self.model.state_dict(), "masks": self.masks, "iteration": iteration}
            save_atomic(checkpoint, self.out_dir / "checkpoints" / f"iteration_{iteration}.pt")

    def save_model(self) -> Path:
        """The final pruned weights as a plain state_dict, zeros in place, the model's own keys (rank 0 writes)."""
        self.shard.check_identical(list(self.model.parameters()), "final weights")
        path = self.out_dir / "model.pt"
        if self.shard.is_main:
            save_atomic({key: value.cpu() for key, value in self.model.state_dict().items()}, path)
            self._check_saved(path)
        return path

    def _masked(self) -> MaskedWeights:
        return MaskedWeights(list(self.weights.values()), [self.masks[name] for name in self.weights])

    def _train(self, phase: PhaseConfig, description: str) -> float:
        def checkpoint_epoch(progress: PhaseProgress, stats: EpochStats) -> None:
            step, iteration = self.steps[self.step]
            row = {"iteration": iteration, "phase": step, **asdict(stats), "images_per_second": stats.images_per_second}
            self.epochs.write([row])
            log.info(
                f"{description} epoch {stats.epoch}/{phase.epochs}: train loss {stats.train_loss:.4f}, "
                f"{stats.images_per_second:,.0f} images/s"
            )
            self.phase_progress = progress
            self._save_state()

        try:
            return train_phase(
                self.shard.wrap(self.train_model, self.device), self.data.train, phase, self._masked(), self.generator,
                description, self.phase_progress, checkpoint_epoch, self.stop_requested, self.shard,
            )  # fmt: skip
        except NonFiniteLoss as fault:
            iteration, state = self.steps[self.step][1], self.out_dir / STATE_FILE
            kept = f"; completed epochs are kept in {state}" if state.is_file() else ""
            raise UserError(
                f"training loss became NaN or infinite in iteration {iteration} ({description}), epoch {fault.epoch}: "
                f"lower the learning rate or the weight decay and run again{kept}"
            ) from fault

    def _load_dense(self, path: Path) -> None:
        state = load_model_state(path)
        mismatch = state_dict_mismatch(self.model.state_dict(), state)
        if mismatch:
            raise UserError(f"checkpoint {path} does not fit model={self.config.model.name}: {mismatch}")
        self.model.load_state_dict(state)

    def _save_state(self) -> None:
        """Everything a resumed run needs, as of the end of the last completed epoch or step (rank 0 writes)."""
        if not self.shard.is_main:
            return
        state = {
            "fingerprint": fingerprint(self.config), "step": self.step, "phase": asdict(self.phase_progress),
            "model": self.model.state_dict(), "masks": self.masks, "dense_std": self.dense_std,
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
            "rows": {"metrics": self.metrics.rows, "layers": self.layers.rows, "epochs": self.epochs.rows},
        }  # fmt: skip
        save_atomic(state, self.out_dir / STATE_FILE)

    def _restore(self) -> dict[str, int]:
        """Load `last.pt` into this run; return how many rows of each CSV it had written."""
        path = self.out_dir / STATE_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated or foreign file: the errors of zip and pickle vary
            raise UserError(
                f"cannot resume: {path} is unreadable ({type(error).__name__}); delete it to restart"
            ) from error
        if state["fingerprint"] != fingerprint(self.config):
            raise UserError(
                f"{self.out_dir} holds a run with a different configuration; resume it with the same overrides, "
                "give a new hydra.run.dir, or pass resume=false to start it over"
            )
        self.model.load_state_dict(state["model"])
        device = next(self.model.parameters()).device
        self.masks = {name: mask.to(device) for name, mask in state["masks"].items()}
        violated = unmasked_layers(self.weights, self.masks)
        if violated:
            raise UserError(
                f"cannot resume: {path} has non-zero pruned weights in {', '.join(violated)} (edited or corrupt); "
                "delete it to restart"
            )
        self.dense_std, self.step = state["dense_std"], state["step"]
        self.phase_progress = PhaseProgress(**state["phase"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        return state["rows"]

    def _record(self, iteration: int, phase: str, epochs: int, start: float, train_loss: float, pruning=None) -> None:
        """Evaluate, then append this phase's rows to metrics.csv and layers.csv (rank 0 only)."""
        self._check_masks()
        if not self.shard.is_main:
            return
        with InputDensity(self.spec.prunable(self.model)) as density:
            evaluation = evaluate(self.model, self.data.test, self.config.dataset.eval_batch_size)
        inputs_nonzero = density.fractions()
        parameters = list(self.model.parameters())
        total, nonzero = sum(parameter.numel() for parameter in parameters), count_nonzero(parameters)
        row = {
            "iteration": iteration, "phase": phase, "epochs": epochs, "params_total": total,
            "params_nonzero": nonzero, "compression": total / nonzero, "top1": evaluation.top1,
            "top5": evaluation.top5, "loss": evaluation.loss, "train_loss": train_loss,
            "seconds": time.perf_counter() - start,
        }  # fmt: skip
        self.metrics.write([row])
        key = {"iteration": iteration, "phase": phase}
        self.layers.write(
            [
                {
                    **key,
                    "layer": name,
                    **(pruning or {}).get(name, {}),
                    **layer_stats(weight, self.positions[name]),
                    "inputs_nonzero": inputs_nonzero[name],
                }  # fmt: skip
                for name, weight in self.weights.items()
            ]
        )

    def _check_masks(self) -> None:
        """Fail loudly if any pruned weight is not exactly zero: sparsity silently lost is the worst bug here."""
        violated = unmasked_layers(self.weights, self.masks)
        if violated:
            raise RuntimeError(f"mask violated: pruned weights of {', '.join(violated)} are not zero in the model")

    def _check_saved(self, path: Path) -> None:
        """Read `model.pt` back from disk and check its pruned weights are zero there too."""
        state = torch.load(path, weights_only=True)
        saved = {name: state[f"{module}.weight"] for name, module in self.spec.layers.items()}
        violated = unmasked_layers(saved, self.masks)
        if violated:
            raise RuntimeError(f"mask violated: pruned weights of {', '.join(violated)} are not zero in {path}")


def fingerprint(config: RunConfig) -> str:
    """The settings that determine a run's numbers; a run resumes only under the same fingerprint."""
    settings = asdict(config)
    for key in ("resume", "device", "deterministic", "compile"):
        settings.pop(key)
    return json.dumps(settings, sort_keys=True, default=str)


def check_phase(name: str, phase: PhaseConfig, processes: int = 1) -> None:
    """Refuse settings no training phase can run with, before any work starts."""
    for key, value, low in (("epochs", phase.epochs, 0), ("batch_size", phase.batch_size, 1)):
        if value < low:
            raise UserError(f"{name}.{key} is {value}; it must be >= {low}")
    if phase.batch_size % processes:
        raise UserError(
            f"{name}.batch_size is {phase.batch_size}, which {processes} processes cannot share evenly; it is the "
            f"global batch: make it a multiple of {processes}"
        )
    if phase.lr <= 0:
        raise UserError(f"{name}.lr is {phase.lr}; it must be > 0")
    if phase.max_batches is not None and phase.max_batches < 1:
        raise UserError(f"{name}.max_batches is {phase.max_batches}; it must be >= 1, or null for whole epochs")


def run(
    config: RunConfig,
    out_dir: Path,
    stop_requested: Callable[[], bool] = lambda: False,
    shard: Shard = SINGLE_PROCESS,
) -> pd.DataFrame | None:
    """Run (or resume) every phase into `out_dir`; return metrics.csv (None on ranks other than 0).

    Bad input fails here, before any training.
    """
    spec = get_model_spec(config.model.name)
    pruning = config.pruning
    targets = resolve_targets(list(spec.layers), pruning.sensitivity, pruning.layer_sensitivity, pruning.kept)
    check_phase("train", config.train, shard.world_size)
    check_phase("retrain", config.retrain, shard.world_size)
    if pruning.iterations < 0:
        raise UserError(f"pruning.iterations is {pruning.iterations}; it must be >= 0")
    plan = pruning_schedule(spec.layer_kinds(), pruning.iterations, pruning.alternate, config.retrain.freeze)
    analysis = pruning.name == "sensitivity"
    if analysis:
        analysed = resolve_analysed_layers(list(spec.layers), pruning.layer)
        levels = pruning.levels if pruning.sensitivity is None else [pruning.sensitivity]
        check_levels(levels, pruning.level_kind)
        if config.dataset.val_split == 0:
            raise UserError("a sensitivity analysis evaluates on held-out training data: set dataset.val_split=N")
    device = process_device(shard, resolve_device(config.device.name))
    if device.type == "cuda" and not config.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
    torch.manual_seed(config.seed)
    with process_group(shard, device) as shard:
        with shard.main_first():  # a download into dataset.root happens once
            data = load_data(config.dataset, spec.input_shape, config.seed).to(device)
        experiment = PruningRun(config, out_dir, spec, data, device, shard)
        experiment.stop_requested = lambda: shard.any(stop_requested())
        experiment.execute(targets, plan)
    if not shard.is_main:
        return None
    if analysis:
        log = CsvLog(out_dir / "sensitivity.csv", SENSITIVITY_COLUMNS)
        weights = {name: experiment.weights[name] for name in analysed}
        batch_size = config.dataset.eval_batch_size
        for row in layer_sensitivity(experiment.model, weights, data.val, levels, pruning.level_kind, batch_size):
            log.write([row])
    return pd.read_csv(out_dir / "metrics.csv")


def resolve_analysed_layers(layer_names: list[str], layer: str | None) -> list[str]:
    """The layers a sensitivity analysis prunes: the one named, or all; an unknown name lists the valid ones."""
    if layer is None:
        return layer_names
    if layer not in layer_names:
        raise UserError(
            f"pruning.layer={layer} is not a prunable layer of this model; choose one of {', '.join(layer_names)}"
        )
    return [layer]
