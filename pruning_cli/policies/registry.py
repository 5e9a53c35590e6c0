"""Every `pruning=<name>` choice and the policy that carries it out, found by importing each module of this package:
a policy is one module (its class names its choices) and one YAML file, with no list to edit here."""

import importlib
import pkgutil
from pathlib import Path

from pruning_cli.policies.base import CHOICES, PolicyContext, PruningPolicy


def _import_policy_modules() -> dict[str, type[PruningPolicy]]:
    """Import every module of this package, so that each policy class registers its choices (in file order)."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")
    return CHOICES


POLICIES: dict[str, type[PruningPolicy]] = _import_policy_modules()


def schemas() -> dict[str, object]:
    """The config schema of each `pruning=<name>` choice, by its name in Hydra's ConfigStore (`<name>_schema`, the
    first default of configs/pruning/<name>.yaml), its `name` set: a policy is named once, by its choice."""
    return {f"{name}_schema": policy.settings(name=name) for name, policy in POLICIES.items()}


def build_policy(settings, context: PolicyContext) -> PruningPolicy:
    """The policy of `pruning=<settings.name>`, its settings checked (ValueError naming the bad one)."""
    if settings.name not in POLICIES:
        raise ValueError(
            f"pruning.name={settings.name} is no pruning policy; choose one of {', '.join(sorted(POLICIES))}"
        )
    return POLICIES[settings.name](settings, context)
