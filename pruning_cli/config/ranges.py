"""The range of every numeric setting, stated once beside its default in its schema, and the one check of them all.

A schema field says its range with `ranged(rule, default)`; `range_problems` walks a composed config (nested
dataclasses) and names every number outside its range, and every NaN or infinity (refused everywhere unless a
rule admits it). Checks between settings (a split that leaves no training data, a layer the model lacks) are not
ranges: they stay with the plan (run/plan.py) and the policies.
"""

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

RANGE = "range"  # the key of a field's metadata that holds its Range


@dataclass(frozen=True)
class Range:
    """The numbers a setting admits: from `low` to `high`, each end open or closed; never NaN, never infinite."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if math.isinf(self.low) and math.isinf(self.high):
            return "a finite number"
        if math.isinf(self.high):
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


ANY = Range()
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1)  # [0, 1]
SHARE = Range(0, 1, low_open=True)  # (0, 1]: a fraction that keeps something


def ranged(rule: Range, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A schema field whose values must lie in `rule` (and be finite)."""
    return dataclasses.field(default=default, metadata={RANGE: rule}, **kwargs)


def range_problems(settings: Any, prefix: str = "") -> Iterator[str]:
    """One line per numeric setting of `settings` (a dataclass, walked into its nested ones) outside its range:
    the key, the value, the rule, and the fix."""
    for spec in fields(settings):
        value, key = getattr(settings, spec.name), f"{prefix}{spec.name}"
        if is_dataclass(value):
            yield from range_problems(value, f"{key}.")
            continue
        rule = spec.metadata.get(RANGE, ANY)
        numbers = value if isinstance(value, list) else [value]
        bad = [number for number in numbers if _is_number(number) and not rule.admits(number)]
        if bad:
            example = f", e.g. {key}={spec.default}, its default" if _is_number(spec.default) else ""
            yield f"{key} is {value}; it must be {rule}{' (each of its values)' if value is numbers else ''}{example}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
