"""Every numeric setting states its range in its schema, and one check refuses any value outside it, NaN and
infinity included, in one line before any work. The cases come from the schemas themselves: a setting added later
is covered without editing this file."""

import copy
import functools
import math
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
from runs import SMOKE, compose_config, prune_run

from pruning_cli.cli import config_dir
from pruning_cli.config.ranges import RANGE, Range
from pruning_cli.config.schema import GROUP_SCHEMAS, MISSING, RunConfig
from pruning_cli.errors import UserError
from pruning_cli.policies import schemas as policy_schemas
from pruning_cli.run.plan import plan_run

GROUPS = ("dataset", "task", "pruning", "quantize")
# The policies whose `pruning.target` has no default, composed with one.
NEEDS = {
    key.removesuffix("_schema"): ["pruning.target=4"]
    for key, schema in policy_schemas().items()
    if getattr(schema, "target", None) == MISSING
}


def _schemas() -> set[type]:
    """Every dataclass a composed config can hold: the run's, those nested in it, each group's and each policy's."""
    found, todo = set(), [RunConfig, *(s for group in GROUP_SCHEMAS.values() for s in group.values())]
    todo += [type(schema) for schema in policy_schemas().values()]
    while todo:
        schema = todo.pop()
        if schema in found:
            continue
        found.add(schema)
        todo += [hint for hint in typing.get_type_hints(schema).values() if is_dataclass(hint)]
    return found


def _numeric(hint: object) -> bool:
    """int, float, an optional one, or a list of them (bool is not a number here)."""
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    return hint in (int, float) or any(_numeric(argument) for argument in arguments)


def test_every_numeric_setting_of_every_schema_states_its_range():
    missing = [
        f"{schema.__name__}.{spec.name}"
        for schema in _schemas()
        for spec in fields(schema)
        if _numeric(typing.get_type_hints(schema)[spec.name]) and RANGE not in spec.metadata
    ]
    assert missing == []


def _outside(rule: Range) -> float:
    return rule.low - (0 if rule.low_open else 1) if math.isfinite(rule.low) else rule.high + 1


# Every choice of every group, named from the files (composing them all takes seconds: done in the tests, not here).
CHOICES = [(group, path.stem) for group in GROUPS for path in sorted((Path(config_dir()) / group).glob("*.yaml"))]


@functools.cache
def _cases(group: str, choice: str) -> tuple[list[str], list[str]]:
    """(the overrides a choice is composed with, the overrides that must be refused there): for each ranged setting
    under `group.`, a value just outside its range and, for floats, NaN. The first choice also takes the settings
    of the run itself (train., retrain., ...)."""
    base = [f"{group}={choice}", *NEEDS.get(choice, [])]
    cases = []
    for key, spec, value in _ranged(compose_config(*base)):
        if (group, choice) != CHOICES[0] and not key.startswith(f"{group}."):
            continue
        rule = spec.metadata[RANGE]
        if math.isfinite(rule.low) or math.isfinite(rule.high):  # else only NaN and infinity are outside
            bad = _outside(rule)
            bad_text = f"[{bad}]" if isinstance(value, list) else str(int(bad) if _is_int(spec) else bad)
            cases.append(f"{key}={bad_text}")
        if not _is_int(spec):
            cases.append(f"{key}={'[nan]' if isinstance(value, list) else 'nan'}")
    return base, cases


def _is_int(spec) -> bool:
    return "int" in str(spec.type) and "float" not in str(spec.type)


def _ranged(settings, prefix: str = ""):
    for spec in fields(settings):
        value = getattr(settings, spec.name)
        if is_dataclass(value):
            yield from _ranged(value, f"{prefix}{spec.name}.")
        elif RANGE in spec.metadata:
            yield f"{prefix}{spec.name}", spec, value


def _with(config: RunConfig, override: str) -> RunConfig:
    """A copy of `config` with `key=value` set as Hydra would parse it (a number, or a list of one)."""
    key, text = override.split("=")
    *path, name = key.split(".")
    config = copy.deepcopy(config)
    node = functools.reduce(getattr, path, config)
    value = float(text.strip("[]"))
    value = value if "." in text or "nan" in text or not text.strip("[]-").isdigit() else int(value)
    setattr(node, name, [value] if text.startswith("[") else value)
    return config


@pytest.mark.parametrize(("group", "choice"), CHOICES)
def test_a_value_outside_its_range_is_refused_in_one_line_before_any_work(group, choice):
    base, cases = _cases(group, choice)
    config = compose_config(*base)
    not_refused = {}
    for override in cases:
        key = override.split("=")[0]
        try:
            plan_run(_with(config, override))
            not_refused[override] = "accepted"
        except UserError as refused:
            message = str(refused)
            if not (message.startswith(f"{key} is ") and "; it must be " in message and "\n" not in message):
                not_refused[override] = message
    assert not_refused == {}


def test_the_cases_cover_every_group_and_nan():
    cases = [case for group, choice in CHOICES for case in _cases(group, choice)[1]]
    assert len(set(cases)) > 60
    keys = {override.split("=")[0].split(".")[0] for override in cases}
    assert {"train", "retrain", "quantize", "dataset", "pruning", "task"} <= keys
    assert {"train.lr=nan", "pruning.budget=nan", "retrain.distill.temperature=0"} <= set(cases)


MEASURED = [
    (["retrain.weight_decay=-1"], "retrain.weight_decay is -1.0; it must be >= 0, e.g. retrain.weight_decay=0.0005"),
    (["dataset.eval_batch_size=0"], "dataset.eval_batch_size is 0; it must be >= 1, e.g. dataset.eval_batch_size="),
    (["pruning=auto", "pruning.budget=nan"], "pruning.budget is nan; it must be >= 0, e.g. pruning.budget=0.3"),
    (["pruning.sensitivity=inf"], "pruning.sensitivity is inf; it must be >= 0, e.g. pruning.sensitivity=1.0"),
    (["train.lr=nan"], "train.lr is nan; it must be > 0, e.g. train.lr=0.05, its default"),
]


@pytest.mark.parametrize(("overrides", "message"), MEASURED)
def test_each_measured_case_is_refused_with_its_message(overrides, message):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*SMOKE, *overrides))
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


@pytest.mark.slow
def test_the_cli_refuses_a_measured_case_with_exit_2_one_line_and_no_work(tmp_path):
    """The CLI prints what plan_run raises as one line (the cases above in process) and writes nothing."""
    overrides, message = MEASURED[2]
    refused = prune_run(*SMOKE, *overrides, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"prune-run: error: {message}")
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "metrics.csv").exists()
