"""The structure the code promises: short functions, Hydra at the edge, the pruning rule in `pruning/` only."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pruning_cli"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 40


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported_packages(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_function_is_longer_than_40_lines():
    long = [
        f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 40
    ]
    assert long == []


def test_hydra_and_omegaconf_are_imported_by_the_cli_only():
    importers = {
        path.relative_to(PACKAGE).as_posix()
        for path in MODULES
        if _imported_packages(_tree(path)) & {"hydra", "omegaconf"}
    }
    # models/registry.py: hydra.utils.instantiate builds a user's own module (model=custom) from its import path.
    assert importers <= {"cli.py", "records.py", "models/registry.py"} and "cli.py" in importers


def _calls(node: ast.AST, name: str) -> bool:
    """`node` calls `name(...)` or `x.name(...)`; for `std`, the weights' std (no dim: a whole layer's)."""
    if not isinstance(node, ast.Call) or name not in (getattr(node.func, "attr", None), getattr(node.func, "id", None)):
        return False
    return name != "std" or not (node.args or node.keywords)


@pytest.mark.parametrize("primitive", ["threshold_mask", "top_fraction_mask", "strongest_per_output", "std"])
def test_the_pruning_rule_lives_in_pruning_only(primitive):
    """The rule's pieces (thresholds, kept fractions, the empty-layer cap, the std) are called in pruning/ alone."""
    callers = {
        path.relative_to(PACKAGE).as_posix()
        for path in MODULES
        for node in ast.walk(_tree(path))
        if _calls(node, primitive)
    }
    assert callers and all(caller.startswith("pruning/") for caller in callers), callers


def test_every_subpackage_is_installed():
    """pyproject.toml lists the packages a (non-editable) install ships: a new subpackage missing there imports in
    the source tree and fails on a fresh machine."""
    listed = set(re.findall(r'"(pruning_cli(?:\.\w+)*)"', (PACKAGE.parent / "pyproject.toml").read_text()))
    found = {
        ".".join(path.parent.relative_to(PACKAGE.parent).parts) for path in PACKAGE.rglob("__init__.py")
    }  # fmt: skip
    assert found - listed == set()
