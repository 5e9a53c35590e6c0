"""The records contract: what a run writes and what every reader of a run may rely on.

One module owns the CSV schemas (the writer's columns, the reader's required ones), the keys that make two runs
"the same experiment" (resume refuses another experiment; `prune-report` averages the repeats of one), and
`run.json`, the small machine-readable record every run writes first: its whole config and the data its
weights were trained on. Readers (`prune-report`, `prune-export`, a sensitivity analysis given a checkpoint)
read that record, never Hydra's YAML.
"""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pruning_cli.config.schema import RunConfig
from pruning_cli.records.files import write_atomic


@dataclass(frozen=True)
class CsvSchema:
    """One CSV of a run: its file name, its columns in order, and those a reader needs on every row."""

    file: str
    columns: tuple[str, ...]
    required: tuple[str, ...]

    @property
    def optional(self) -> tuple[str, ...]:
        """Columns a row may leave empty (train_loss of a prune row) or an older run may lack."""
        return tuple(column for column in self.columns if column not in self.required)


METRICS = CsvSchema(
    "metrics.csv",
    ("iteration", "phase", "epochs", "params_total", "params_nonzero", "compression", "top1", "top5", "loss",
     "val_top1", "val_loss", "confirm_top1", "confirm_loss", "train_loss", "seconds", "val_lost", "val_gained",
     "val_drop", "val_bound", "verdict"),
    ("iteration", "phase", "params_total", "params_nonzero", "top1"),
)  # fmt: skip
LAYERS = CsvSchema(
    "layers.csv",
    ("iteration", "phase", "layer", "weights_total", "weights_nonzero", "kept", "std", "sensitivity", "threshold",
     "flops_total", "flops_nonzero", "inputs_nonzero", "dead_inputs", "dead_outputs", "bits", "shared_values"),
    ("iteration", "phase", "layer", "weights_total", "weights_nonzero"),
)  # fmt: skip
EPOCHS = CsvSchema(
    "epochs.csv",
    ("iteration", "phase", "epoch", "train_loss", "lr", "images", "seconds", "images_per_second"),
    ("iteration", "phase", "epoch"),
)
SENSITIVITY = CsvSchema(
    "sensitivity.csv", ("layer", "sensitivity", "threshold", "kept", "top1", "top5", "loss"), ("layer", "top1")
)
# The `phase` of metrics, layers and epochs rows, in the order they run. `rollback` (pruning=auto) is the model a
# walk went back to when a walk step went past its budget (the last walk step within it, or the dense model: the
# walk ends there and it is model.pt). A retraining row of pruning=auto also has the walk step's test: the
# validation images lost and gained against the dense model (`val_lost`, `val_gained`), the drop seen and its upper
# bound (`val_drop`, `val_bound`: fractions, like top1) and the `verdict` (within or past the budget). `quantize`
# (quantize=kmeans) is trained quantization of the final pruned model, which model.pt then holds.
PHASES = ("train", "prune", "retrain", "rollback", "quantize")

RUN_RECORD = "run.json"
RECORD_FORMAT = 1
# The files of a run directory besides the CSVs (readers find them here, the run writes them there).
MODEL_FILE = "model.pt"  # the final pruned weights, a plain state_dict
CHECKPOINTS = Path("checkpoints")
STATE_FILE = CHECKPOINTS / "last.pt"  # what a resumed run continues from
DENSE_CHECKPOINT = CHECKPOINTS / "dense.pt"  # the model after phase 1
MLFLOW_RUN_FILE = "mlflow_run.json"  # logger=mlflow: the MLflow run of this job, reopened by a resumed run

# Keys that do not change what a run computes (where files live, how it is executed): resume ignores them and
# the report does not tell runs apart by them.
NOT_EXPERIMENT_KEYS = (
    "resume", "device", "deterministic", "compile", "logger",
    "dataset.root", "dataset.download", "dataset.system_dir", "dataset.eval_batch_size", "dataset.num_workers",
    "dataset.check_images",
)  # fmt: skip
# The repeats of one experiment: the report averages over them; a run resumes only with the same ones.
REPEAT_KEYS = ("seed", "train.checkpoint")


@dataclass(frozen=True)
class TrainingData:
    """What a model's weights were trained on: the data set, its training images before the validation split,
    and the split (the first `val_split` images of a permutation drawn with `split_seed` are held out)."""

    dataset: str
    images: int
    val_split: int
    split_seed: int
    confirm_split: int = 0  # held out after the validation images, from the same draw

    def overlaps_validation_of(self, other: "TrainingData") -> bool:
        """True when these weights were trained on some image that `other` holds out (validation or confirmation)."""
        if (self.dataset, self.images) != (other.dataset, other.images):
            return False  # another data set (or another size of a generated one): other images
        held_out_here = self.val_split + self.confirm_split if self.split_seed == other.split_seed else 0
        return held_out_here < other.val_split + other.confirm_split


TrainedOn = list[TrainingData] | None  # every data set a model's weights were trained on; None: not known


def config_tree(config: RunConfig) -> dict[str, Any]:
    """The config as plain JSON values (enums as their names), nested like the YAML."""
    return json.loads(
        json.dumps(asdict(config), default=lambda value: value.value if isinstance(value, Enum) else str(value))
    )


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 0.1}}` -> `{"train.lr": 0.1}` (a dict-valued setting such as `pruning.kept` stays whole)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and prefix + key not in ("pruning.kept", "pruning.layer_sensitivity"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def experiment_settings(flat: Mapping[str, Any], repeats: bool = True) -> dict[str, Any]:
    """The settings that determine a run's numbers (without the repeat keys when `repeats` is false)."""
    dropped = NOT_EXPERIMENT_KEYS if repeats else NOT_EXPERIMENT_KEYS + REPEAT_KEYS
    return {
        key: value
        for key, value in flat.items()
        if not any(key == prefix or key.startswith(f"{prefix}.") for prefix in dropped)  # `device` drops `device.name`
    }


def fingerprint(config: RunConfig) -> str:
    """A run resumes only under the same fingerprint: the same experiment and the same repeat."""
    return json.dumps(experiment_settings(flatten(config_tree(config))), sort_keys=True)


def write_run_record(
    out_dir: Path, config: RunConfig, trained_on: TrainedOn, runtime: Mapping[str, Any] | None = None
) -> None:
    """`run.json`: the format, the whole config, every data set the run's weights are trained on, and what the
    device policy made of the config on this machine (device, memory format, each phase's arithmetic)."""
    record = {"format": RECORD_FORMAT, "config": config_tree(config), "trained_on": as_records(trained_on)}
    if runtime is not None:
        record["runtime"] = dict(runtime)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(json.dumps(record, indent=2) + "\n", out_dir / RUN_RECORD)


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """The record of the run in `run_dir`; ValueError (with the reason) when it is missing or unreadable."""
    path = run_dir / RUN_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ValueError(f"no {RUN_RECORD} (a run of a version before run.json, or one that never started)") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{RUN_RECORD} cannot be read ({type(error).__name__})") from error
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{RUN_RECORD} has no config")
    return record


def recorded_training_data(record: Mapping[str, Any]) -> TrainedOn:
    """The `trained_on` list of a run record or checkpoint (None where it has none, or a malformed one)."""
    try:
        return [TrainingData(**entry) for entry in record["trained_on"]]
    except (KeyError, TypeError):
        return None


def checkpoint_training_data(path: Path, extras: Mapping[str, Any]) -> TrainedOn:
    """What a checkpoint's weights were trained on: from the checkpoint itself, or, for a plain state_dict such as
    a run's model.pt, from the run.json beside it."""
    found = recorded_training_data(extras)
    if found is None and (path.parent / RUN_RECORD).is_file():
        try:
            found = recorded_training_data(read_run_record(path.parent))
        except ValueError:
            return None
    return found


def training_history(inherited: TrainedOn, own: TrainingData) -> TrainedOn:
    """A model trained on `own` after starting from weights trained on `inherited` (unknown stays unknown)."""
    return None if inherited is None else list(dict.fromkeys([*inherited, own]))


def as_records(trained_on: TrainedOn) -> list[dict[str, Any]] | None:
    """`trained_on` as it is written into run.json and the checkpoints."""
    return None if trained_on is None else [asdict(entry) for entry in trained_on]


def excluded_layers(run_dir: Path) -> list[str]:
    """The layers the run left dense (pruning.exclude in its record; none for an older run or no record)."""
    try:
        pruning = read_run_record(run_dir)["config"].get("pruning") or {}
    except ValueError:
        return []
    return list(pruning.get("exclude") or [])
