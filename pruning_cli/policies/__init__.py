"""Pruning policies: each `pruning=<name>` choice is one module here, with its own settings schema."""

from pruning_cli.policies.base import KEEP, PolicyContext, PruneStep, PruningPolicy, RunView, Verdict
from pruning_cli.policies.registry import POLICIES, build_policy, schemas

__all__ = [
    "KEEP", "POLICIES", "PolicyContext", "PruneStep", "PruningPolicy", "RunView", "Verdict", "build_policy", "schemas",
]  # fmt: skip
