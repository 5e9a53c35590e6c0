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
    assert importers <= {"cli.py", "records/contract.py", "models/registry.py"} and "cli.py" in importers


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


# What each part of the package may import of the others: lower layers never import higher ones. The pruning math
# knows nothing of the policies or the run; the policies know the math, not the run; the run reaches the policies
# only through the `policies` package (its seam); readers of finished runs (report, sparse) never import the run.
ALLOWED_IMPORTS = {
    "errors": set(),
    "paper": set(),
    "config": {"errors"},
    "parallel": set(),
    "console": {"errors"},
    "pruning": {"config"},
    "models": {"errors"},
    "records": {"config", "errors"},
    "quantize": set(),
    "data": {"config", "errors", "parallel"},
    "training": {"config", "data", "parallel", "pruning"},
    "policies": {"config", "errors", "paper", "pruning"},
    "run": {
        "config",
        "data",
        "errors",
        "models",
        "parallel",
        "policies",
        "pruning",
        "quantize",
        "records",
        "training",
    },  # fmt: skip
    "trackers": {"config", "errors", "records"},
    "sparse": {"console", "data", "errors", "models", "pruning", "records"},
    "report": {"config", "console", "errors", "models", "paper", "policies", "records", "sparse"},
    "cli": {"config", "errors", "parallel", "policies", "records", "run", "trackers", "training"},
}


def _part(path: Path) -> str:
    """The part of the package a module belongs to: its subpackage, or a root module's own name."""
    relative = path.relative_to(PACKAGE).parts
    return relative[0] if len(relative) > 1 else relative[0].removesuffix(".py")


def _package_imports(tree: ast.Module) -> set[str]:
    """The modules of this package that `tree` imports, dotted (`pruning_cli.policies.base`)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pruning_cli."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pruning_cli.")}
    return found


def test_no_part_imports_a_part_above_it():
    wrong = sorted(
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in MODULES
        if _part(path) != "__init__"
        for module in _package_imports(_tree(path))
        if module.split(".")[1] not in ALLOWED_IMPORTS[_part(path)] | {_part(path)}
    )
    assert wrong == []


def test_the_run_reaches_the_policies_through_their_seam_only():
    """The run imports `pruning_cli.policies` (base types and the registry), never one policy's module."""
    reaching_in = sorted(
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in (PACKAGE / "run").rglob("*.py")
        for module in _package_imports(_tree(path))
        if module.startswith("pruning_cli.policies.")
    )
    assert reaching_in == []


def test_the_package_root_keeps_at_most_five_modules():
    assert len(list(PACKAGE.glob("*.py"))) <= 5, sorted(path.name for path in PACKAGE.glob("*.py"))


def test_no_class_is_longer_than_200_lines():
    long = [
        f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200
    ]
    assert long == []


# The literal tables of data whose hand-set layout the formatter keeps: the paper's figures and the CSV columns.
FORMAT_SKIPPED = {"paper.py", "records/contract.py"}


def test_the_formatter_writes_every_line_but_the_literal_tables_of_data():
    skipping = {path.relative_to(PACKAGE).as_posix() for path in MODULES if "# fmt: skip" in path.read_text()}
    assert skipping <= FORMAT_SKIPPED, sorted(skipping - FORMAT_SKIPPED)
