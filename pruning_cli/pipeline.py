"""The paper's method end to end: train (or load) the dense model, then prune -> retrain, iterated."""

import time
from pathlib import Path
from typing import Any

import torch

from pruning_cli.artifacts import (
    LAYERS_COLUMNS,
    METRICS_COLUMNS,
    CsvLog,
    load_model_state,
    save_atomic,
    state_dict_mismatch,
)
from pruning_cli.config import PhaseConfig, RunConfig, StdSource
from pruning_cli.data import ImageData, load_data
from pruning_cli.errors import UserError
from pruning_cli.models import ModelSpec, get_model_spec
from pruning_cli.pruning.dropout import rescaled_dropout
from pruning_cli.pruning.masks import count_nonzero, full_masks
from pruning_cli.pruning.stats import layer_stats
from pruning_cli.pruning.targets import LayerTarget, prune_layer, resolve_targets
from pruning_cli.training.loop import MaskedWeights, evaluate, train_phase


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but this machine has no usable CUDA device; use device=cpu or device=auto")
    return torch.device(name)


class PruningRun:
    """One run's state (model, masks, logs) and its phases; each phase writes its rows as soon as it ends."""

    def __init__(self, config: RunConfig, out_dir: Path, spec: ModelSpec, data: ImageData, device: torch.device):
        self.config, self.out_dir, self.spec, self.data = config, out_dir, spec, data
        self.model = spec.build(data.num_classes).to(device)
        self.weights = {name: layer.weight for name, layer in spec.prunable(self.model).items()}
        self.masks = full_masks(self.weights)
        self.positions = spec.output_positions(self.model)
        self.dropout_rates = {name: self.model.get_submodule(path).p for name, path in spec.dropouts.items()}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.metrics = CsvLog(out_dir / "metrics.csv", METRICS_COLUMNS)
        self.layers = CsvLog(out_dir / "layers.csv", LAYERS_COLUMNS)

    def dense(self) -> dict[str, Any]:
        """Phase 1: train the dense model, or load it from `train.checkpoint` and only evaluate it."""
        start, train_loss, epochs = time.perf_counter(), float("nan"), 0
        if self.config.train.checkpoint:
            self._load_dense(Path(self.config.train.checkpoint).expanduser())
        else:
            epochs = self.config.train.epochs
            train_loss = self._train(self.config.train, "dense training")
        self.dense_std = {name: weight.std().item() for name, weight in self.weights.items()}
        save_atomic({"model": self.model.state_dict(), "iteration": 0}, self.out_dir / "checkpoints" / "dense.pt")
        return self._record(0, "train", epochs, start, train_loss)

    def prune(self, iteration: int, targets: dict[str, LayerTarget]) -> dict[str, Any]:
        """Phase 2: shrink each layer's mask (threshold = s x std, or the scheduled kept fraction)."""
        start, pruning = time.perf_counter(), {}
        iterations = self.config.pruning.iterations
        for name, target in targets.items():
            weight, mask = self.weights[name], self.masks[name]
            std = self.dense_std[name] if self.config.pruning.std is StdSource.dense else weight[mask].std().item()
            self.masks[name], threshold = prune_layer(weight, mask, target, std, iteration, iterations)
            pruning[name] = {"std": std, "threshold": threshold, "sensitivity": threshold / std if std else None}
        self._masked().mask_weights()
        return self._record(iteration, "prune", 0, start, float("nan"), pruning)

    def retrain(self, iteration: int) -> dict[str, Any]:
        """Phase 3: retrain the survivors from their current values, dropout rescaled to the layers' sparsity."""
        start = time.perf_counter()
        for name, path in self.spec.dropouts.items():
            mask = self.masks[name]
            dropout = self.model.get_submodule(path)
            dropout.p = rescaled_dropout(self.dropout_rates[name], mask.numel(), int(mask.sum()))
        train_loss = self._train(self.config.retrain, f"retraining {iteration}")
        row = self._record(iteration, "retrain", self.config.retrain.epochs, start, train_loss)
        checkpoint = {"model": self.model.state_dict(), "masks": self.masks, "iteration": iteration}
        save_atomic(checkpoint, self.out_dir / "checkpoints" / f"iteration_{iteration}.pt")
        return row

    def save_model(self) -> Path:
        """The final pruned weights as a plain state_dict, zeros in place, the model's own keys."""
        path = self.out_dir / "model.pt"
        save_atomic({key: value.cpu() for key, value in self.model.state_dict().items()}, path)
        return path

    def _masked(self) -> MaskedWeights:
        return MaskedWeights(list(self.weights.values()), [self.masks[name] for name in self.weights])

    def _train(self, phase: PhaseConfig, description: str) -> float:
        return train_phase(self.model, self.data.train, phase, self._masked(), self.generator, description)

    def _load_dense(self, path: Path) -> None:
        state = load_model_state(path)
        mismatch = state_dict_mismatch(self.model.state_dict(), state)
        if mismatch:
            raise UserError(f"checkpoint {path} does not fit model={self.config.model.name}: {mismatch}")
        self.model.load_state_dict(state)

    def _record(self, iteration: int, phase: str, epochs: int, start: float, train_loss: float, pruning=None) -> dict:
        """Evaluate, then append this phase's rows to metrics.csv and layers.csv."""
        self._check_masks()
        evaluation = evaluate(self.model, self.data.test, self.config.dataset.eval_batch_size)
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
                {**key, "layer": name, **(pruning or {}).get(name, {}), **layer_stats(weight, self.positions[name])}
                for name, weight in self.weights.items()
            ]
        )
        return row

    def _check_masks(self) -> None:
        """Fail loudly if any pruned weight is not exactly zero: sparsity silently lost is the worst bug here."""
        for name, weight in self.weights.items():
            if torch.any(weight.detach()[~self.masks[name]] != 0):
                raise RuntimeError(f"mask violated: pruned weights of layer {name} are not zero")


def check_phase(name: str, phase: PhaseConfig) -> None:
    """Refuse settings no training phase can run with, before any work starts."""
    for key, value, low in (("epochs", phase.epochs, 0), ("batch_size", phase.batch_size, 1)):
        if value < low:
            raise UserError(f"{name}.{key} is {value}; it must be >= {low}")
    if phase.lr <= 0:
        raise UserError(f"{name}.lr is {phase.lr}; it must be > 0")


def run(config: RunConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Run every phase into `out_dir`; return the metrics rows. Bad input fails here, before any training."""
    spec = get_model_spec(config.model.name)
    pruning = config.pruning
    targets = resolve_targets(list(spec.layers), pruning.sensitivity, pruning.layer_sensitivity, pruning.kept)
    check_phase("train", config.train)
    check_phase("retrain", config.retrain)
    if pruning.iterations < 0:
        raise UserError(f"pruning.iterations is {pruning.iterations}; it must be >= 0")
    device = resolve_device(config.device.name)
    torch.manual_seed(config.seed)
    data = load_data(config.dataset, spec.input_shape, config.seed).to(device)
    experiment = PruningRun(config, out_dir, spec, data, device)
    rows = [experiment.dense()]
    for iteration in range(1, pruning.iterations + 1):
        rows.append(experiment.prune(iteration, targets))
        rows.append(experiment.retrain(iteration))
    experiment.save_model()
    return rows
