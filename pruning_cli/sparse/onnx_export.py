"""`prune-export --format onnx`: the pruned model as an ONNX graph (`model.onnx`) that onnxruntime runs.

The graph is the compacted dense model: with dead hidden units removed (paper sec. 3.5, `export.py`'s removal,
unless `--keep-dead`), a pruned layer's zero rows and columns are gone, so its matrices are smaller; the remaining
zeros stay in dense matrices, as ONNX's standard operators have no sparse weights. It is exported with
`torch.onnx.export(..., dynamo=True)` (the torch.export-based exporter, torch's default, which needs onnxscript) with
a dynamic batch axis, then checked: onnxruntime must give model.pt's top-1 on every check input and logits within
`LOGIT_TOLERANCE`, else the file is deleted and the export refused. The check inputs are the run's test images
where they can be read here (`check_images.py`).

onnx, onnxruntime and onnxscript are the optional extra `[onnx]`; without them the format is refused in one line.
"""

import contextlib
import importlib
import io
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from pruning_cli.errors import UserError
from pruning_cli.sparse.check_images import CheckImages

ONNX_FILE = "model.onnx"
CHECK_IMAGES = 1000  # test images (or random inputs) the check runs through both models
LOGIT_TOLERANCE = 1e-4  # largest |logit difference| the check accepts
CHECK_BATCH = 100  # check inputs per forward pass: bounds the memory of a large model
INSTALL = 'pip install -e ".[onnx]"'
INPUT, OUTPUT = "images", "logits"


@dataclass(frozen=True)
class OnnxCheck:
    """What onnxruntime gave against model.pt on the check inputs (`source` says what they were)."""

    source: str
    images: int
    top1_differs: int
    max_logit_diff: float

    @property
    def passed(self) -> bool:
        return self.top1_differs == 0 and self.max_logit_diff <= LOGIT_TOLERANCE


def require_onnx() -> ModuleType:
    """onnxruntime, after checking that the exporter's packages import; a one-line UserError saying how to install
    them when one does not (they are an optional extra, so a plain install lacks them)."""
    try:
        for package in ("onnx", "onnxscript"):
            importlib.import_module(package)
        return importlib.import_module("onnxruntime")
    except ImportError as error:
        missing = getattr(error, "name", None) or "onnx"
        raise UserError(f"--format onnx needs {missing} (onnx, onnxruntime, onnxscript): {INSTALL}") from None


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], output: Path, label: str) -> None:
    """Write `model` to `output` with a dynamic batch axis; an operator the exporter cannot translate becomes one
    line naming the model and the deepest reason (the exporter's own message is a page of advice)."""
    example = torch.zeros(2, *input_shape)  # batch 2: a batch of 1 would be specialised as a constant
    chatter = io.StringIO()  # the exporter prints its progress; the command prints only its report
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            torch.onnx.export(
                model.eval(),
                (example,),
                str(output),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                input_names=[INPUT],
                output_names=[OUTPUT],
                external_data=False,  # one file, as every other format
            )
    except Exception as error:  # the exporter raises many kinds (OnnxExporterError, torch.export's, dispatch ones)
        output.unlink(missing_ok=True)
        raise UserError(f"{label} cannot be exported to ONNX: {root_reason(error)}") from None


def root_reason(error: BaseException) -> str:
    """The first line of the innermost cause of `error`: where the exporter says which operator failed."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def check_onnx(reference: nn.Module, output: Path, inputs: CheckImages) -> OnnxCheck:
    """Run `inputs` through onnxruntime on `output` and through `reference` (model.pt's own model) in batches;
    count the top-1 predictions that differ and the largest |logit difference|."""
    onnxruntime = require_onnx()
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    differs, largest = 0, 0.0
    with torch.no_grad():
        for batch in inputs.images.split(CHECK_BATCH):
            ours = torch.from_numpy(session.run([OUTPUT], {INPUT: batch.numpy()})[0])
            expected = reference.eval()(batch)
            differs += int((ours.argmax(dim=1) != expected.argmax(dim=1)).sum())
            largest = max(largest, float((ours - expected).abs().max()))
    return OnnxCheck(inputs.source, len(inputs.images), differs, largest)


def write_checked_onnx(
    compacted: nn.Module, reference: nn.Module, inputs: CheckImages, output: Path, label: str
) -> OnnxCheck:
    """Export `compacted` (model.pt with its dead units removed) and check it against `reference` (model.pt as
    trained) on `inputs`; delete the file and refuse in one line when the check fails, so no wrong graph is left
    behind."""
    require_onnx()
    export_onnx(compacted, tuple(inputs.images.shape[1:]), output, label)
    check = check_onnx(reference, output, inputs)
    if not check.passed:
        output.unlink(missing_ok=True)
        raise UserError(
            f"{output} does not compute model.pt on {check.source}: {check.top1_differs} top-1 predictions differ, "
            f"largest |logit difference| {check.max_logit_diff:.2e} (at most {LOGIT_TOLERANCE:.0e} allowed); "
            "the file was deleted"
        )
    return check


def describe_check(check: OnnxCheck) -> str:
    """The check's figures for the report."""
    return (
        f"onnxruntime on {check.source}: top-1 as model.pt on all, largest |logit difference| "
        f"{check.max_logit_diff:.1e} (<= {LOGIT_TOLERANCE:.0e})"
    )
