"""Per-layer pruning targets: a sensitivity (threshold = s x std) or a final fraction of weights kept."""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerTarget:
    """Exactly one of the two is set: a sensitivity (the paper's quality parameter) or a final kept fraction."""

    sensitivity: float | None = None
    kept: float | None = None


def resolve_targets(
    layer_names: Sequence[str],
    sensitivity: float | None,
    layer_sensitivity: Mapping[str, float] | None,
    kept: Mapping[str, float] | None,
) -> dict[str, LayerTarget]:
    """Per-layer targets: `kept` wins over `layer_sensitivity`, which wins over the global `sensitivity`.

    Layers with no target (global sensitivity null and not named) are left dense. Every check runs here,
    before any training, so a typo costs the user seconds rather than a dense training run.
    """
    layer_sensitivity, kept = _numbers(layer_sensitivity, "layer_sensitivity"), _numbers(kept, "kept")
    unknown = sorted((set(layer_sensitivity) | set(kept)) - set(layer_names))
    if unknown:
        raise ValueError(
            f"pruning names layer(s) {', '.join(unknown)} that this model does not have; "
            f"its prunable layers are: {', '.join(layer_names)}"
        )
    sensitivities = {name: value for name, value in layer_sensitivity.items() if name not in kept}
    if sensitivity is not None:
        sensitivities = {name: sensitivities.get(name, sensitivity) for name in layer_names if name not in kept}
    for name, value in sensitivities.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"sensitivity of layer {name} is {value}; it must be >= 0 (threshold = sensitivity x std)")
    for name, value in kept.items():
        if not 0 < value <= 1:
            raise ValueError(f"kept fraction of layer {name} is {value}; it must be in (0, 1]")
    return {
        name: LayerTarget(kept=kept[name]) if name in kept else LayerTarget(sensitivity=sensitivities[name])
        for name in layer_names
        if name in kept or name in sensitivities
    }


def _numbers(values: Mapping[str, float] | None, option: str) -> dict[str, float]:
    """`{layer: number}` from a config value, or a one-line error saying what shape it must have."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValueError(f"pruning.{option} must be a mapping of layer to number, e.g. pruning.{option}={{fc1:0.5}}")
    try:
        return {str(name): float(value) for name, value in values.items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f"pruning.{option} must map layers to numbers, got {dict(values)}") from error
