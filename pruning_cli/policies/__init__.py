"""Pruning policies: each `pruning=<name>` choice is one module here, with its own settings schema.

This package is the seam between a run and the way it prunes: the run imports what is exported here, never a policy's
module. Policies may import the pruning math (`pruning/`), the schemas (`config/`) and the paper's figures, never the
run.
"""

from pruning_cli.policies.base import KEEP, NoPruning, PolicyContext, PruneStep, PruningPolicy, RunView, Verdict
from pruning_cli.policies.patterned import Patterned
from pruning_cli.policies.registry import POLICIES, build_policy, schemas

__all__ = [
    "KEEP",
    "POLICIES",
    "NoPruning",
    "Patterned",
    "PolicyContext",
    "PruneStep",
    "PruningPolicy",
    "RunView",
    "Verdict",
    "build_policy",
    "schemas",
]
