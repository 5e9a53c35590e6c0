"""A run's state on disk: what a resumed run needs (`checkpoints/last.pt`, after every epoch and step), the
checkpoints of each phase, the final `model.pt`, and the checks that no pruned weight came back to life.

Every checkpoint records what its weights were trained on (records.TrainingData); `model.pt` stays a plain
state_dict, loadable into the bare model, with that record in `run.json` beside it.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pruning_cli.errors import UserError
from pruning_cli.pruning.masks import unmasked_layers
from pruning_cli.records.contract import CHECKPOINTS, MODEL_FILE, STATE_FILE, TrainedOn, as_records
from pruning_cli.records.files import load_checkpoint, save_atomic


class RunStore:
    """Saves and restores one run directory's state and checkpoints (only the process that `writes` writes)."""

    def __init__(self, out_dir: Path, fingerprint: str, trained_on: TrainedOn, writes: bool = True) -> None:
        self.out_dir, self.fingerprint, self.trained_on, self.writes = out_dir, fingerprint, trained_on, writes

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    def save_state(self, state: dict[str, Any], generator: torch.Generator) -> None:
        """Everything a resumed run needs, as of the end of the last completed epoch or step: `state`, and where the
        random number generators stand (torch's global one and the run's `generator`)."""
        if self.writes:
            rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
            record = {"fingerprint": self.fingerprint, "trained_on": as_records(self.trained_on), "rng": rng}
            save_atomic({**record, **state}, self.state_path)

    def load_state(self, generator: torch.Generator) -> dict[str, Any]:
        """The saved state of this very experiment, its random number generators restored (torch's and
        `generator`), or a one-line error saying why it cannot resume."""
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated or foreign file: the errors of zip and pickle vary
            raise UserError(
                f"cannot resume: {self.state_path} is unreadable ({type(error).__name__}); delete it to restart"
            ) from error
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(
                f"{self.out_dir} holds a run with a different configuration; resume it with the same overrides, "
                "give a new hydra.run.dir, or pass resume=false to start it over"
            )
        torch.set_rng_state(state["rng"]["torch"])
        generator.set_state(state["rng"]["generator"])
        return state

    def save_checkpoint(self, name: str, model: nn.Module, iteration: int, masks: Mapping[str, Tensor]) -> None:
        """`checkpoints/<name>.pt`: the model after a phase, its masks and what it was trained on."""
        if self.writes:
            payload = {"model": model.state_dict(), "masks": dict(masks), "iteration": iteration}
            payload["trained_on"] = as_records(self.trained_on)
            save_atomic(payload, self.out_dir / CHECKPOINTS / f"{name}.pt")

    def load_iteration(self, iteration: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The model and masks a run kept after `iteration` (0: the dense model), from its checkpoint."""
        name = "dense" if iteration == 0 else f"iteration_{iteration}"
        state, extras = load_checkpoint(self.out_dir / CHECKPOINTS / f"{name}.pt")
        return state, extras["masks"]

    def save_model(self, model: nn.Module, layer_paths: Mapping[str, str], masks: Mapping[str, Tensor]) -> Path:
        """The final pruned weights as a plain state_dict (zeros in place, the model's own keys), read back from
        disk to check that every pruned weight is zero there too."""
        path = self.out_dir / MODEL_FILE
        if self.writes:
            save_atomic({key: value.cpu() for key, value in model.state_dict().items()}, path)
            saved = torch.load(path, weights_only=True)
            check_masks({name: saved[f"{module}.weight"] for name, module in layer_paths.items()}, masks, str(path))
        return path


def check_masks(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], where: str) -> None:
    """Fail loudly if any pruned weight is not exactly zero: sparsity silently lost is the worst bug here."""
    violated = unmasked_layers(weights, masks)
    if violated:
        raise RuntimeError(f"mask violated: pruned weights of {', '.join(violated)} are not zero in {where}")


def check_restored_masks(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor], path: Path) -> None:
    """A state file whose pruned weights are not zero was edited or damaged: refuse to resume from it."""
    violated = unmasked_layers(weights, masks)
    if violated:
        raise UserError(
            f"cannot resume: {path} has non-zero pruned weights in {', '.join(violated)} (edited or corrupt); "
            "delete it to restart"
        )
