"""A new pruning method is one module and one YAML file: the worked example of docs/architecture.md (`pruning=random`)
is those two files verbatim, registers itself, composes, and prunes a real run as it says."""

import re
from pathlib import Path

import pytest
import torch
from runs import SMOKE, pruning_run_in_process

from pruning_cli.policies import POLICIES, PruningPolicy
from pruning_cli.policies.random_baseline import RandomBaseline

REPOSITORY = Path(__file__).resolve().parent.parent
MODULE = REPOSITORY / "pruning_cli" / "policies" / "random_baseline.py"
YAML = REPOSITORY / "configs" / "pruning" / "random.yaml"


def _code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_worked_example_is_the_shipped_module_and_yaml():
    guide = (REPOSITORY / "docs" / "architecture.md").read_text()
    assert MODULE.read_text() in _code_blocks(guide, "python")
    assert YAML.read_text() in _code_blocks(guide, "yaml")


def test_every_yaml_is_a_registered_choice_and_the_registry_names_none():
    yamls = {path.stem for path in (REPOSITORY / "configs" / "pruning").glob("*.yaml")}
    assert set(POLICIES) == yamls and POLICIES["random"] is RandomBaseline
    registry = (REPOSITORY / "pruning_cli" / "policies" / "registry.py").read_text()
    assert not [name for name in POLICIES if f'"{name}"' in registry]


def test_two_policies_cannot_claim_one_choice():
    with pytest.raises(TypeError, match="pruning=random is claimed by both RandomBaseline and Impostor"):
        type("Impostor", (PruningPolicy,), {"choices": ("random",)})
    assert POLICIES["random"] is RandomBaseline


def _kept_fractions(out_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    overrides = ["model=lenet300", *SMOKE, "pruning=random", "pruning.target=4", "pruning.iterations=2", f"seed={seed}"]
    return pruning_run_in_process(out_dir, *overrides).masks


def test_random_pruning_reaches_its_target_alike_in_every_layer_and_draws_from_the_seed(tmp_path):
    masks = _kept_fractions(tmp_path / "a", seed=0)
    kept = {name: mask.float().mean().item() for name, mask in masks.items()}
    assert kept == pytest.approx(dict.fromkeys(kept, 0.25), abs=0.002)
    total = sum(mask.numel() for mask in masks.values())
    assert sum(int(mask.sum()) for mask in masks.values()) == pytest.approx(total / 4, abs=len(masks))
    again, other_seed = _kept_fractions(tmp_path / "b", seed=0), _kept_fractions(tmp_path / "c", seed=1)
    assert all(torch.equal(masks[name].cpu(), again[name].cpu()) for name in masks)
    overlap = (masks["fc1"] & other_seed["fc1"]).float().mean().item()
    assert overlap == pytest.approx(0.25**2, abs=0.01)  # independent draws: 1/16 kept by both
