"""`prune-export RUN_DIR`: write a run's model.pt as sparse layers (CSR, the paper's compact file, Deep
Compression's quantized and Huffman-coded files, 2:4 layers for a GPU's sparse tensor cores, or an ONNX graph with
its dead units removed); print the sizes of what it wrote.

Bad input gets one line `prune-export: error: ...` on stderr and exit code 2, never a traceback.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from pruning_cli.console import OneLineParser, run_command
from pruning_cli.errors import UserError
from pruning_cli.models import MODELS, ModelSpec, get_model_spec
from pruning_cli.models.registry import IMAGENET_SHAPE, custom_spec, model_key
from pruning_cli.records.contract import MODEL_FILE, RUN_RECORD, excluded_layers, read_run_record
from pruning_cli.records.files import load_model_state, save_atomic, state_dict_mismatch
from pruning_cli.sparse.check_images import check_images
from pruning_cli.sparse.export import (
    build_dense_model,
    export_state_dict,
    file_sizes,
    format_report,
    is_quantized,
    model_from_state,
)
from pruning_cli.sparse.onnx_export import CHECK_IMAGES, ONNX_FILE, describe_check, require_onnx, write_checked_onnx
from pruning_cli.sparse.semi_structured import NO_TWO_FOUR, export_semi_structured, two_four_layers

PROG = "prune-export"
OUTPUTS = {
    "csr": "model_sparse.pt",
    "compact": "model_compact.bin",
    "quantized": "model_quantized.bin",
    "deep": "model_deep.bin",
    "semi_structured": "model_semi_structured.pt",
    "onnx": ONNX_FILE,
}
QUANTIZED_FORMATS = ("quantized", "deep")  # for a model whose layers share values (quantize=kmeans)
SEMI_STRUCTURED = "semi_structured"  # the 2:4 layers of a pruning.pattern=2:4 run, for the sparse tensor cores
ONNX = "onnx"  # a graph for onnxruntime (the optional extra [onnx]); not part of `all`
ALL = "all"  # every sparse format; the quantized ones only for a quantized model


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=" ".join(__doc__.split("\n\n")[0].split(": ", 1)[1].split()))
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a prune-run output directory with model.pt")
    parser.add_argument(
        "--model",
        help=f"model name ({', '.join(MODELS)}, or a torchvision classifier such as resnet18); default: the model of "
        f"RUN_DIR/{RUN_RECORD} (a model=custom run's module is rebuilt from it, with its model.args)",
    )
    parser.add_argument(
        "--keep-dead",
        action="store_true",
        help="keep the layers' shapes; by default hidden units (fc units, conv channels) with no input or no "
        "output connection left are physically removed (paper sec. 3.5)",
    )
    parser.add_argument(
        "--format",
        choices=[*OUTPUTS, ALL],
        default="csr",
        help="csr: model_sparse.pt, a torch file of CSR layers; compact: model_compact.bin, the paper's relative "
        "indices bit-packed (5 bits fc, 8 bits conv; layout in docs/formats.md); quantized: model_quantized.bin, the "
        "same with each value an index into the layer's shared values (a model trained with quantize=kmeans); "
        "deep: model_deep.bin, those indices and gaps Huffman-coded (Deep Compression); semi_structured: "
        "model_semi_structured.pt, the 2:4 layers of a pruning.pattern=2:4 run compressed for the sparse tensor "
        "cores (pruning_cli.sparse.semi_structured.semi_structured_model runs them on a GPU; shapes kept); onnx: "
        "model.onnx, the model with its dead units removed as an ONNX graph for onnxruntime, checked against "
        'model.pt (needs pip install -e ".[onnx]"); all: every one of them that applies but onnx. The .bin files '
        "are read back by pruning_cli.sparse.compact_file.read_compact",
    )
    return parser


def model_name_from_run(run_dir: Path) -> str:
    """The run's model from its record (run.json): `model.name`, or `model.arch` of `model=torchvision`."""
    try:
        model = read_run_record(run_dir)["config"].get("model")
        name = (
            model_key(model.get("name"), model.get("arch"), model.get("_target_")) if isinstance(model, dict) else None
        )
    except ValueError as problem:
        raise UserError(
            f"{run_dir}: {problem}, so the model is unknown; pass --model {'|'.join(MODELS)}|<torchvision name>"
        ) from problem
    if not isinstance(name, str):
        raise UserError(f"{run_dir / RUN_RECORD} has no model.name; pass --model {'|'.join(MODELS)}|<torchvision name>")
    return name


def export_run(run_dir: Path, model_name: str | None, remove_dead: bool, file_format: str = "csr") -> str:
    """Export RUN_DIR/model.pt into RUN_DIR (`OUTPUTS[file_format]`); return the printed report."""
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; give a prune-run output directory")
    model_file = run_dir / MODEL_FILE
    if not model_file.is_file():
        raise UserError(f"{model_file} does not exist; is the run finished? (prune-run writes model.pt at the end)")
    if file_format == ONNX:
        require_onnx()
    name, excluded = model_name or model_name_from_run(run_dir), excluded_layers(run_dir)
    spec = model_spec(run_dir, name)
    state = _checked_state(model_file, name, spec)
    try:
        exported, report = export_state_dict(state, name, remove_dead, excluded, spec)
    except ValueError as error:  # the record's pruning.exclude names layers --model does not have
        raise UserError(f"{model_file}: {error}") from error
    quantized = is_quantized(exported)
    not_applicable = {each: f"is not quantized: {quantized}" for each in QUANTIZED_FORMATS if quantized is not None}
    patterned = two_four_layers(state, spec)
    if not patterned:
        not_applicable[SEMI_STRUCTURED] = f"has {NO_TWO_FOUR}"
    if file_format in not_applicable:
        raise UserError(f"{model_file} {not_applicable[file_format]}")
    dense, lines = int(report.set_index("layer").dense_bytes["total"]), []
    for each in [each for each in OUTPUTS if each != ONNX] if file_format == ALL else [file_format]:
        output = run_dir / OUTPUTS[each]
        if each in not_applicable:
            lines.append(f"skipped {OUTPUTS[each]}: {model_file.name} {not_applicable[each]}")
            continue
        size, which = _write_format(each, output, name, state, exported, report, spec, patterned)
        lines.append(f"wrote {output}: {size:,} bytes, {dense / size:.2f}x smaller than dense float32{which}")
    return "\n".join([format_report(report), *lines])


def model_spec(run_dir: Path, name: str) -> ModelSpec:
    """The spec of model `name`: registered, torchvision's, or (an import path) the run's own module rebuilt from
    its record's model._target_ and model.args; a one-line error when there is none."""
    if "." not in name:
        try:
            return get_model_spec(name)
        except KeyError:
            raise UserError(
                f"unknown model {name!r}; choose one of {', '.join(MODELS)} or a torchvision classifier with --model"
            ) from None
    try:
        model = read_run_record(run_dir)["config"].get("model") or {}
    except ValueError as problem:
        raise UserError(
            f"{run_dir}: {problem}, and model {name}'s arguments (model.args) are recorded there; "
            f"restore {RUN_RECORD} from the run"
        ) from problem
    if model.get("_target_") != name:
        raise UserError(
            f"--model {name} is not the module of {run_dir / RUN_RECORD} ({model.get('_target_')}), "
            "whose arguments prune-export takes; leave --model out"
        )
    try:
        return custom_spec(name, model.get("args"), tuple(model.get("input_shape") or IMAGENET_SHAPE))
    except ValueError as problem:  # the module does not import here
        raise UserError(
            f"{run_dir} is a model=custom run of {name}: {problem}; run prune-export where the module "
            "imports, as prune-run did"
        ) from problem


def _checked_state(model_file: Path, name: str, spec: ModelSpec) -> dict:
    """model.pt's state_dict, or a one-line error when the file does not fit model `name`."""
    state = load_model_state(model_file)
    if not isinstance(state, dict) or not all(hasattr(value, "shape") for value in state.values()):
        raise UserError(f"{model_file} is not a state_dict of tensors")
    last_weight = state.get(f"{list(spec.layers.values())[-1]}.weight")
    num_classes = last_weight.shape[0] if last_weight is not None else 10
    mismatch = state_dict_mismatch(spec.build(num_classes).state_dict(), state)
    if mismatch:
        raise UserError(f"{model_file} does not fit model {name}: {mismatch}")
    return state


def _write_format(
    each: str,
    output: Path,
    name: str,
    state: dict,
    exported: dict,
    report: pd.DataFrame,
    spec: ModelSpec,
    patterned: list[str],
) -> tuple[int, str]:
    """Write the file of format `each`; return its size and what the report line adds after the ratio."""
    if each == SEMI_STRUCTURED:
        return _write_semi_structured(output, state, name, patterned), f"; 2:4 layers: {', '.join(patterned)}"
    if each == ONNX:
        return _write_onnx(output, name, state, exported, spec)
    return _write(output, each, name, exported, report), ""


def _write_onnx(output: Path, name: str, state: dict, exported: dict, spec: ModelSpec) -> tuple[int, str]:
    """Write model.onnx from the exported (dead units removed) weights, checked against model.pt's own model on
    the run's test images (or fixed random inputs where they cannot be read here)."""
    compacted, reference = build_dense_model(exported, spec), model_from_state(name, state, spec)
    config = run_config(output.parent)
    inputs = check_images(config, run_input_shape(config, spec), CHECK_IMAGES)
    try:
        check = write_checked_onnx(compacted, reference, inputs, output, name)
    except OSError as error:
        raise UserError(f"cannot write {output}: {error.strerror or error}") from error
    return output.stat().st_size, f"; {describe_check(check)}"


def run_config(run_dir: Path) -> dict:
    """run.json's config, or nothing for a bare model.pt (prune-export --model NAME)."""
    try:
        return read_run_record(run_dir)["config"]
    except ValueError:
        return {}


def run_input_shape(config: dict, spec: ModelSpec) -> tuple[int, ...]:
    """The images the run's model took: its config's model.input_shape (a torchvision model trained at another
    size), else the spec's."""
    recorded = (config.get("model") or {}).get("input_shape")
    return tuple(recorded) if recorded else tuple(spec.input_shape)


def _write(output: Path, file_format: str, name: str, exported: dict, report: pd.DataFrame) -> int:
    """Write one format; add its per-layer entry bytes (and the file's size in the total row) to `report` as
    `<format>_file` and return the file's size."""
    try:
        if file_format == "csr":
            save_atomic(exported, output)
            report["csr_file"] = pd.array([pd.NA] * (len(report) - 1) + [output.stat().st_size], dtype="Int64")
            return output.stat().st_size
        sizes = file_sizes(exported, name, file_format, output)
    except OSError as error:
        raise UserError(f"cannot write {output}: {error.strerror or error}") from error
    report[f"{file_format}_file"] = pd.array(report.layer.map(sizes), dtype="Int64")
    return sizes["total"]


def _write_semi_structured(output: Path, state: dict, name: str, patterned: list[str]) -> int:
    """Write model_semi_structured.pt from the run's state (shapes kept: the kernels need them); return its size."""
    try:
        save_atomic(export_semi_structured(state, name, patterned), output)
    except OSError as error:
        raise UserError(f"cannot write {output}: {error.strerror or error}") from error
    return output.stat().st_size


def run(argv: list[str] | None = None) -> int:
    """The command; returns the exit code."""

    def command() -> str:
        args = build_parser().parse_args(argv)
        return export_run(args.run_dir, args.model, remove_dead=not args.keep_dead, file_format=args.format)

    return run_command(PROG, command)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
