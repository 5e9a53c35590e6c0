"""Every `pruning=<name>` choice and the policy that carries it out: one line each."""

from pruning_cli.policies.base import PolicyContext, PruningPolicy
from pruning_cli.policies.budgeted import BudgetedWalk
from pruning_cli.policies.global_magnitude import GlobalMagnitude
from pruning_cli.policies.gradual import GradualMagnitude
from pruning_cli.policies.lamp import Lamp
from pruning_cli.policies.paper_rule import PaperRule

POLICIES: dict[str, type[PruningPolicy]] = {
    "iterative": PaperRule,
    "oneshot": PaperRule,
    "auto": BudgetedWalk,
    "global": GlobalMagnitude,
    "lamp": Lamp,
    "gradual": GradualMagnitude,
}


def schemas() -> dict[str, object]:
    """The config schema of each `pruning=<name>` choice, by its name in Hydra's ConfigStore (`<name>_schema`, the
    first default of configs/pruning/<name>.yaml), its `name` set: a policy is named once, by its key here."""
    return {f"{name}_schema": policy.settings(name=name) for name, policy in POLICIES.items()}


def build_policy(settings, context: PolicyContext) -> PruningPolicy:
    """The policy of `pruning=<settings.name>`, its settings checked (ValueError naming the bad one)."""
    if settings.name not in POLICIES:
        raise ValueError(f"pruning.name={settings.name} is no pruning policy; choose one of {', '.join(POLICIES)}")
    return POLICIES[settings.name](settings, context)
