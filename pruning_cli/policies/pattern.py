"""`pruning.pattern=N:M` on top of any policy: the masks it chooses, then at most N of every M weights along the input
of each layer the semi-structured kernels take (pruning/pattern.py); the other layers keep the policy's masks."""

import logging
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from pruning_cli.config import Freeze
from pruning_cli.policies.base import PruneStep, PruningPolicy, RunView, Verdict
from pruning_cli.pruning.pattern import n_of_m_mask

log = logging.getLogger(__name__)


class Patterned(PruningPolicy):
    """`inner`'s decisions, its masks passed through the N:M rule on `layers`."""

    def __init__(self, inner: PruningPolicy, n: int, m: int, layers: list[str]) -> None:
        super().__init__(inner.config, inner.context)
        self.inner, self.n, self.m, self.layers = inner, n, m, layers
        self.reads_validation = inner.reads_validation

    @property
    def iterations(self) -> int:
        return self.inner.iterations

    def apply(self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The masks with the pattern on the layers that take it."""
        return {
            name: n_of_m_mask(weights[name], mask, self.n, self.m) if name in self.layers else mask
            for name, mask in masks.items()
        }

    def prune(self, iteration: int, run: RunView) -> PruneStep | None:
        step = self.inner.prune(iteration, run)
        return None if step is None else PruneStep(self.apply(run.weights, step.masks), step.records)

    def during_retraining(self, iteration: int, step: int, steps: int, run: RunView) -> dict[str, Tensor] | None:
        masks = self.inner.during_retraining(iteration, step, steps, run)
        return None if masks is None else self.apply(run.weights, masks)

    def freeze(self, iteration: int) -> Freeze:
        return self.inner.freeze(iteration)

    def verdict(self, iteration: int, run: RunView) -> Verdict:
        return self.inner.verdict(iteration, run)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)
