"""`pruning.pattern=N:M` under any policy: on each layer the semi-structured kernels take, at most N of every M
weights along the input survive (pruning/nm_sparsity.py), and the policy chooses within that. It sees the run's masks
with the pattern already applied, so whatever it keeps is a subset of them (still N:M) and its own count of the
weights (a compression target, a schedule) holds exactly; the other layers are the policy's alone."""

import logging
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from pruning_cli.config.schema import Freeze
from pruning_cli.policies.base import PruneStep, PruningPolicy, RunView, Verdict
from pruning_cli.pruning.nm_sparsity import n_of_m_mask

log = logging.getLogger(__name__)


class _PatternedView:
    """The run as the inner policy sees it: its weights and predictions, its masks with the pattern applied."""

    def __init__(self, run: RunView, masks: dict[str, Tensor]) -> None:
        self.weights, self.masks, self.run = run.weights, masks, run

    def validation_correct(self) -> Tensor:
        return self.run.validation_correct()


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

    def view(self, run: RunView) -> _PatternedView:
        return _PatternedView(run, self.apply(run.weights, run.masks))

    def prune(self, iteration: int, run: RunView) -> PruneStep | None:
        view = self.view(run)
        step = self.inner.prune(iteration, view)
        if step is None:
            return None
        # a policy that keeps the masks as they are (gradual before its schedule) still gets the pattern
        return PruneStep({name: mask & view.masks[name] for name, mask in step.masks.items()}, step.records)

    def during_retraining(
        self, iteration: int, optimizer_step: int, optimizer_steps: int, run: RunView
    ) -> dict[str, Tensor] | None:
        return self.inner.during_retraining(iteration, optimizer_step, optimizer_steps, self.view(run))

    def freeze(self, iteration: int) -> Freeze:
        return self.inner.freeze(iteration)

    def verdict(self, iteration: int, run: RunView) -> Verdict:
        return self.inner.verdict(iteration, run)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)
