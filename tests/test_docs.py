"""The documentation says what the code does: every config key with its default and range (docs/configuration.md),
every column of every CSV (docs/outputs.md), every link and anchor that resolves, and a README short enough to be a
guide. The expectations come from the schemas and the records contract, so a key or a column added, renamed or
given another default fails here until the docs say so."""

import dataclasses
import enum
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from pruning_cli.config.ranges import RANGE
from pruning_cli.config.schema import GROUP_SCHEMAS, MISSING, RunConfig
from pruning_cli.policies import POLICIES, schemas
from pruning_cli.records import contract
from pruning_cli.records.contract import CsvSchema

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
OUTPUTS = DOCS / "outputs.md"
README = ROOT / "README.md"
INSTALL = 'python3 -m venv .venv && .venv/bin/pip install -c constraints.txt ".[dev]" && . .venv/bin/activate'


# --- reading markdown ------------------------------------------------------------------------------------------------


def _prose(text: str) -> Iterator[str]:
    """The lines of a markdown text outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, the lines under it up to the next heading of any level), in order."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in _prose(text):
        if re.match(r"#{1,6} ", line):
            sections.append((line, []))
        else:
            sections[-1][1].append(line)
    return sections


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row (`\\|` is a pipe inside a cell)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _rows(lines: list[str]) -> dict[str, list[str]]:
    """{key: cells} of the table rows whose first cell is one `code` span."""
    rows = {}
    for line in lines:
        cells = _cells(line) if line.startswith("|") else []
        if cells and re.fullmatch(r"`[^`]+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: dict[str, int] = {}
    anchors = set()
    for heading, _ in _sections(path.read_text())[1:]:
        anchor = _anchor(heading)
        anchors.add(f"{anchor}-{found[anchor]}" if anchor in found else anchor)
        found[anchor] = found.get(anchor, 0) + 1
    return anchors


# --- docs/configuration.md: every key, its default and its range ------------------------------------------------------


def _default(spec: dataclasses.Field) -> object:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return MISSING


def _shown(value: object) -> str:
    """A default as docs/configuration.md writes it: `required` for none, else YAML's spelling in a code span."""

    def plain(item: object) -> str:
        if item is None:
            return "null"
        if isinstance(item, bool):
            return str(item).lower()
        if isinstance(item, enum.Enum):
            return str(item.value)
        if isinstance(item, float):
            return f"{item:g}"
        if isinstance(item, list):
            return "[" + ", ".join(plain(element) for element in item) + "]"
        return str(item)

    return "required" if value == MISSING else f"`{plain(value)}`"


def _choices(hint: object) -> list[str]:
    """The values an enum-typed setting takes (none for another type)."""
    kinds = [kind for kind in (hint, *typing.get_args(hint)) if isinstance(kind, type) and issubclass(kind, enum.Enum)]
    return [str(member.value) for kind in kinds for member in kind]


@dataclasses.dataclass(frozen=True)
class Key:
    """One setting as a user writes it (`retrain.distill.weight`), the schema that states it, and where its row may
    be: the section of that schema, of one of its bases, or of the schema it is nested in."""

    name: str
    schema: type
    spec: dataclasses.Field
    owners: tuple[type, ...]


def _walk(schema: type, prefix: str = "", outer: tuple[type, ...] = ()) -> Iterator[Key]:
    owners = tuple(base for base in schema.__mro__ if dataclasses.is_dataclass(base)) + outer
    for spec in dataclasses.fields(schema):
        default = _default(spec)
        if dataclasses.is_dataclass(default):
            yield from _walk(type(default), f"{prefix}{spec.name}.", owners)
        else:
            yield Key(f"{prefix}{spec.name}", schema, spec, owners)


def _schemas() -> list[tuple[type, str]]:
    """Every schema a composed config can hold, with its place: the run's, each group's kinds, each policy's."""
    found = [(RunConfig, "")]
    found += [(kind, f"{group}.") for group, kinds in GROUP_SCHEMAS.items() for kind in kinds.values()]
    policies = [schema if isinstance(schema, type) else type(schema) for schema in schemas().values()]
    found += [(schema, "pruning.") for schema in [*policies, *(policy.settings for policy in POLICIES.values())]]
    return list(dict.fromkeys(found))


def _keys() -> list[Key]:
    return list(dict.fromkeys(key for schema, prefix in _schemas() for key in _walk(schema, prefix)))


def _schema_sections() -> dict[str, list[dict[str, list[str]]]]:
    """{schema name: the tables of each section whose heading names it in a code span}."""
    by_schema: dict[str, list[dict[str, list[str]]]] = {}
    for heading, lines in _sections(CONFIGURATION.read_text()):
        for name in re.findall(r"`(\w+)`", heading):
            by_schema.setdefault(name, []).append(_rows(lines))
    return by_schema


def _row(key: Key, sections: dict[str, list[dict[str, list[str]]]]) -> list[str] | None:
    """The row of `key` in the nearest section: its schema's, then its bases', then the enclosing schemas'."""
    for owner in key.owners:
        for rows in sections.get(owner.__name__, []):
            if key.name in rows:
                return rows[key.name]
    return None


def _problems(key: Key, row: list[str] | None) -> list[str]:
    where = f"{key.name} ({key.schema.__name__})"
    if row is None or len(row) < 3:
        return [f"{where}: no row `{key.name}` | default | range | ... in a section naming `{key.schema.__name__}`"]
    problems = []
    if row[1] != _shown(_default(key.spec)):
        problems.append(f"{where}: default is {_shown(_default(key.spec))}, the doc says {row[1]}")
    rule = key.spec.metadata.get(RANGE)
    choices = _choices(typing.get_type_hints(key.schema)[key.spec.name])
    expected = str(rule) if rule is not None else ", ".join(f"`{choice}`" for choice in choices)
    if (rule is not None or choices) and row[2] != expected:
        problems.append(f"{where}: range is {expected}, the doc says {row[2] or 'nothing'}")
    return problems


def test_every_config_key_is_documented_with_its_default_and_range():
    sections = _schema_sections()
    problems = [problem for key in _keys() for problem in _problems(key, _row(key, sections))]
    assert problems == []


def test_every_documented_config_key_exists():
    """No row for a key that was renamed or removed: the reference never offers a setting the schemas refuse."""
    keys = _keys()
    schema_names = {owner.__name__ for key in keys for owner in key.owners}
    documented = {
        name
        for schema, tables in _schema_sections().items()
        if schema in schema_names
        for rows in tables
        for name in rows
    }
    assert documented - {key.name for key in keys} == set()


def test_every_config_group_choice_is_documented():
    """Each YAML of configs/<group>/ (`experiment=lenet300_paper`, `hydra/launcher=slurm`) is named as group=choice."""
    text = CONFIGURATION.read_text()
    configs = ROOT / "configs"
    choices = [
        f"{path.parent.relative_to(configs).as_posix()}={path.stem}"
        for path in sorted(configs.rglob("*.yaml"))
        if path.parent != configs
    ]
    assert choices
    assert [choice for choice in choices if f"`{choice}`" not in text] == []


# --- docs/outputs.md: every file and every column ---------------------------------------------------------------------

CSV_SCHEMAS = [value for value in vars(contract).values() if isinstance(value, CsvSchema)]


def test_the_records_contract_has_its_csvs():
    assert {schema.file for schema in CSV_SCHEMAS} >= {"metrics.csv", "layers.csv", "epochs.csv", "sensitivity.csv"}


@pytest.mark.parametrize("schema", CSV_SCHEMAS, ids=lambda schema: schema.file)
def test_every_column_of_every_csv_is_documented_in_its_section(schema):
    sections = [lines for heading, lines in _sections(OUTPUTS.read_text()) if f"`{schema.file}`" in heading]
    assert sections, f"docs/outputs.md has no section headed `{schema.file}`"
    text = "\n".join(line for lines in sections for line in lines)
    assert [column for column in schema.columns if f"`{column}`" not in text] == []


def test_every_file_of_a_run_and_every_phase_is_documented():
    text = OUTPUTS.read_text()
    files = [contract.RUN_RECORD, contract.MODEL_FILE, contract.STATE_FILE, contract.DENSE_CHECKPOINT]
    named = [f"`{Path(file).as_posix()}`" for file in files] + [f"`{phase}`" for phase in contract.PHASES]
    assert [name for name in named if name not in text] == []


# --- links, and the README as a guide ---------------------------------------------------------------------------------

MARKDOWN = [README, *sorted(DOCS.glob("*.md"))]


def _links(path: Path) -> Iterator[str]:
    for line in _prose(path.read_text()):
        yield from re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line))


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(path):
    broken = []
    for link in _links(path):
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.exists():
            broken.append(f"{link}: no {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{link}: no heading with that anchor")
    assert broken == []


def test_the_readme_is_a_short_guide_with_the_commands_ci_runs():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    assert [number for number, line in enumerate(lines, 1) if len(line) > 200] == []
    assert INSTALL in lines
    blocks = re.findall(r"## Run the tests\n+```bash\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks == ["pytest\n"]
    assert (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1] == "pytest"
