"""docs/mappings.md stays true: its examples load, its tables hold and its outputs are real.

- every ```yaml block that starts with `version: 1` is a complete mapping file: it loads with
  `load_mappings` (alone, in a tmp folder, with the demo environment of mappings/sandbox.env
  plus a placeholder for any other variable it references without a default), with no problem
  and no warning;
- every row of the transform examples table gives its documented output;
- every ```yaml block that starts with `# broken copy of …, saved as /tmp/…` makes `validate`
  print exactly the ```text block after it;
- the documented missing-variable message and `mappings test website-contact …` output are what
  the commands print;
- the recipes table lists exactly the shipped mappings.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.mapping import load_mappings
from bridge.mapping.env import read_env_file, references
from bridge.mapping.expressions import Compiler
from bridge.mapping.models import ValueObject
from bridge.mapping.values import OMIT, compile_value
from bridge.mapping_cli import dry_run, validate

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "mappings.md"
MAPPINGS = ROOT / "mappings"
PLACEHOLDER = "doc-example-placeholder-value"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SAVED_AS = re.compile(r"^# broken copy of .*, saved as (/tmp/\S+\.yaml)\n")
TRANSFORM_ROW = re.compile(r"^\| `(.+)` \| `(.+)` \| `(.+)` \|$", re.MULTILINE)
DRY_RUN = "leadbridge mappings test --sandbox website-contact tests/fixtures/payloads/website-contact.json"


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # the line of the opening fence in the doc


def blocks() -> list[Block]:
    doc = DOC.read_text(encoding="utf-8")
    return [
        Block(match.group(1), match.group(2), doc.count("\n", 0, match.start()) + 1)
        for match in FENCE.finditer(doc)
    ]


def section(title: str) -> str:
    """The doc text from the heading `title` to the next heading of the same or a higher level."""
    doc = DOC.read_text(encoding="utf-8")
    start = doc.index(title + "\n")
    level = title.split(" ", 1)[0]
    ends = [doc.find("\n" + "#" * n + " ", start + 1) for n in range(1, len(level) + 1)]
    found = [end for end in ends if end != -1]
    return doc[start : min(found)] if found else doc[start:]


def sandbox_env() -> dict[str, str]:
    return read_env_file(MAPPINGS / "sandbox.env")


def environ_for(text: str) -> dict[str, str]:
    """The demo environment, plus a placeholder for each other variable named without a default."""
    environ = sandbox_env()
    for name, has_default in references(text):
        if not has_default:
            environ.setdefault(name, PLACEHOLDER)
    return environ


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


FIRST_LINE = re.compile(r"version: 1(\s+#.*)?\n")
MAPPING_BLOCKS = [block for block in blocks() if block.lang == "yaml" and FIRST_LINE.match(block.text)]
BROKEN_BLOCKS = [block for block in blocks() if block.lang == "yaml" and SAVED_AS.match(block.text)]


def test_the_doc_has_examples() -> None:
    assert len(MAPPING_BLOCKS) >= 8
    assert len(BROKEN_BLOCKS) >= 2


@pytest.mark.parametrize("block", MAPPING_BLOCKS, ids=[f"line{block.line}" for block in MAPPING_BLOCKS])
def test_documented_mapping_loads(block: Block, tmp_path: Path) -> None:
    path = write(tmp_path, "example.yaml", block.text)
    mappings = load_mappings(path, environ_for(block.text))
    assert len(mappings) == 1, f"docs/mappings.md:{block.line}"
    assert mappings.warnings == [], f"docs/mappings.md:{block.line}"


def transform_rows() -> list[tuple[str, str, str]]:
    return TRANSFORM_ROW.findall(section("### Examples"))


def test_the_transform_table_is_found() -> None:
    assert len(transform_rows()) >= 30


@pytest.mark.parametrize("row", transform_rows(), ids=lambda row: f"{row[0]} {row[1]}")
def test_documented_transform(row: tuple[str, str, str]) -> None:
    then, given, expected = row
    spec = ValueObject.model_validate({"path": "@", "then": yaml.safe_load(then)})
    result: Any = compile_value(spec, "lead.data.f", Compiler())(json.loads(given))
    assert (None if result is OMIT else result) == json.loads(expected)


@pytest.mark.parametrize("block", BROKEN_BLOCKS, ids=[f"line{block.line}" for block in BROKEN_BLOCKS])
def test_documented_validate_output(block: Block, tmp_path: Path) -> None:
    all_blocks = blocks()
    output = next(b for b in all_blocks if b.line > block.line and b.lang == "text")
    match = SAVED_AS.match(block.text)
    assert match is not None
    documented = Path(match.group(1))
    path = write(tmp_path / documented.parent.relative_to("/tmp"), documented.name, block.text)
    out = io.StringIO()
    assert validate(path.parent, sandbox_env(), out) == 1
    assert out.getvalue().replace(str(tmp_path), "/tmp") == output.text


def test_documented_missing_variable(tmp_path: Path) -> None:
    example = next(b for b in MAPPING_BLOCKS if "name: partner-leads\n" in b.text)
    message = next(b for b in blocks() if b.lang == "text" and "PARTNER_TOKEN is not set" in b.text)
    documented = Path(message.text.split(":", 2)[1].strip())
    path = write(tmp_path / documented.parent.relative_to("/tmp"), documented.name, example.text)
    out = io.StringIO()
    assert validate(path.parent, {}, out) == 1
    assert message.text in out.getvalue().replace(str(tmp_path), "/tmp")


def test_documented_dry_run_output(monkeypatch: pytest.MonkeyPatch) -> None:
    all_blocks = blocks()
    command = next(b for b in all_blocks if b.lang == "sh" and DRY_RUN in b.text)
    output = next(b for b in all_blocks if b.line > command.line and b.lang == "json")
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    payload = Path("tests/fixtures/payloads/website-contact.json")
    assert dry_run("website-contact", payload, {}, Path("mappings"), sandbox_env(), out) == 0
    assert json.loads(out.getvalue()) == json.loads(output.text)


def test_recipes_list_every_shipped_mapping() -> None:
    listed = set(re.findall(r"^\| `([a-z0-9-]+\.yaml)` \|", section("## Recipes"), re.MULTILINE))
    shipped = {path.name for path in MAPPINGS.glob("*.yaml")}
    assert listed == shipped


async def test_the_readme_first_mapping_loads_and_maps_its_sample(tmp_path: Path) -> None:
    """README's "Writing a first mapping" is what newcomers copy: it must load, and map the
    sample it is tried on as its comments say (a normalised key, no state, the phone kept)."""
    readme = (ROOT / "README.md").read_text()
    text = readme.split("Save this as `mappings/my-website-form.yaml`:", 1)[1]
    block = FENCE.search(text)
    assert block is not None
    assert block.group(1) == "yaml"
    (tmp_path / "my-website-form.yaml").write_text(block.group(2))
    secret = {"MY_WEBSITE_FORM_SECRET": "whsec_bXkgd2Vic2l0ZSBmb3JtIHNlY3JldA=="}
    mapping = load_mappings(tmp_path, secret).get("my-website-form")
    assert mapping is not None
    payload = json.loads((ROOT / "tests/fixtures/payloads/website-contact.json").read_text())
    (command,) = (await mapping.plan(payload)).commands
    assert command.key == "jane.doe@example.com"
    assert command.state is None
    assert command.data["phone"].startswith("+49")
