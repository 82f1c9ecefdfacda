"""Loading mapping files: problems as `file:line: field.path: message`, env vars, names, schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.errors import MappingValidationError
from bridge.mapping import CompiledMapping, MappingSet, load_mappings
from bridge.mapping.env import read_env_file, references, substitute
from bridge.mapping.loader import load_all
from bridge.mapping.schema import render
from bridge.providers.standard_webhooks import StandardWebhooksProvider

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "mapping"
INVALID: list[dict[str, Any]] = yaml.safe_load((FIXTURES / "invalid.yaml").read_text())

BASE = """\
version: 1
name: {name}
provider: none
verify: {{insecure: true}}
table: t1
action: create
lead:
  data:
    email: email
"""


def write(folder: Path, filename: str, text: str) -> Path:
    path = folder / filename
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", INVALID, ids=[case["id"] for case in INVALID])
def test_invalid_files_report_file_line_and_field(case: dict[str, Any], tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", case["file"])
    result = load_all(path, case.get("env", {}))
    problems = [line.replace(str(path), "{file}") for line in result.problems]
    warnings = [line.replace(str(path), "{file}") for line in result.warnings]
    assert len(problems) == len(case["problems"]), problems
    for got, want in zip(problems, case["problems"], strict=True):
        assert got.startswith(want), got
    for got, want in zip(warnings, case.get("warnings", []), strict=True):
        assert got.startswith(want), got
    assert len(warnings) == len(case.get("warnings", []))
    if case["problems"]:
        with pytest.raises(MappingValidationError) as caught:
            load_mappings(path, case.get("env", {}))
        assert caught.value.problems == result.problems


def test_a_folder_loads_every_yaml_and_yml_and_ignores_the_rest(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", BASE.format(name="alpha"))
    write(tmp_path, "b.yml", BASE.format(name="beta"))
    write(tmp_path, ".hidden.yaml", "not: [valid")
    write(tmp_path, "schema.json", "{}")
    write(tmp_path, "sandbox.env", "A=1\n")
    write(tmp_path, "notes.txt", "version: 7")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "c.yaml", "broken: [")
    mappings = load_mappings(tmp_path, {})
    assert isinstance(mappings, MappingSet)
    assert mappings.names == ["alpha", "beta"]
    assert len(mappings) == 2
    assert "alpha" in mappings
    assert [m.name for m in mappings] == ["alpha", "beta"]
    alpha = mappings.get("alpha")
    assert isinstance(alpha, CompiledMapping)
    assert alpha.source_path == tmp_path / "a.yaml"
    assert mappings.get("gamma") is None


def test_a_single_file_path(tmp_path: Path) -> None:
    path = write(tmp_path, "one.yaml", BASE.format(name="one"))
    mappings = load_mappings(path, {})
    assert mappings.names == ["one"]


def test_compiled_mapping_attributes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "version: 1\nname: sw\nprovider: standard-webhooks\n"
        'verify: {secret: "${SECRET}", tolerance_s: 60}\ntable: t9\naction: upsert\nkey: id\nlink: people\n',
    )
    mapping = load_mappings(path, {"SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}).get("sw")
    assert mapping is not None
    assert (mapping.name, mapping.provider_name, mapping.table, mapping.action, mapping.link) == (
        "sw",
        "standard-webhooks",
        "t9",
        "upsert",
        "people",
    )
    assert isinstance(mapping.provider, StandardWebhooksProvider)
    assert mapping.provider.options.tolerance_s == 60
    assert "whsec_" not in repr(mapping)
    assert "whsec_" not in repr(mapping.provider.options)


def test_duplicate_names_are_refused_with_both_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", BASE.format(name="same"))
    second = write(tmp_path, "b.yaml", BASE.format(name="same"))
    with pytest.raises(MappingValidationError) as caught:
        load_mappings(tmp_path, {})
    assert caught.value.problems == [
        f"{second}:2: name: name 'same' is already used by {tmp_path / 'a.yaml'}"
    ]


def test_every_problem_of_every_file_is_collected(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", BASE.format(name="Bad_Name"))
    write(tmp_path, "b.yaml", BASE.format(name="ok") + "    phone: {path: phone, then: [nope]}\n")
    with pytest.raises(MappingValidationError) as caught:
        load_mappings(tmp_path, {})
    assert [p.split(": ", 2)[1] for p in caught.value.problems] == ["name", "lead.data.phone.then[0]"]
    assert str(caught.value) == "\n".join(caught.value.problems)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(MappingValidationError) as caught:
        load_mappings(tmp_path / "nowhere", {})
    assert caught.value.problems == [f"{tmp_path / 'nowhere'}: no such file or folder"]
    empty = load_mappings(tmp_path, {})
    assert len(empty) == 0
    assert empty.warnings == [f"{tmp_path}: no mapping files (*.yaml, *.yml) in this folder"]


def test_warnings_do_not_stop_loading(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", BASE.format(name="w") + "    gone: {path: x, on_null: delete}\n")
    mappings = load_mappings(path, {})
    assert mappings.names == ["w"]
    assert any(
        w.startswith(f"{path}:10: lead.data.gone.on_null: on_null: delete without a `when`")
        for w in mappings.warnings
    )


# --- ${VAR} ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "environ", "result", "missing"),
    [
        ("plain", {}, "plain", []),
        ("${A}", {"A": "1"}, "1", []),
        ("x-${A}-${B}", {"A": "1", "B": "2"}, "x-1-2", []),
        ("${A:-d}", {}, "d", []),
        ("${A:-d}", {"A": ""}, "d", []),
        ("${A:-}", {}, "", []),
        ("${A:-a b/c}", {}, "a b/c", []),
        ("${A:-d}", {"A": "set"}, "set", []),
        ("${A}", {"A": ""}, "", []),
        ("${MISSING}", {}, "", ["MISSING"]),
        ("${A}${MISSING}${B}", {"A": "1"}, "1", ["MISSING", "B"]),
        ("$${A}", {"A": "1"}, "${A}", []),
        ("$A ${ A } {A}", {"A": "1"}, "$A ${ A } {A}", []),
    ],
)
def test_substitute(text: str, environ: dict[str, str], result: str, missing: list[str]) -> None:
    got, got_missing, used = substitute(text, environ)
    assert (got, got_missing) == (result, missing)
    assert set(used) <= set(environ) | {"A"}


def test_references() -> None:
    assert references("${A} ${B:-x} $${C}") == [("A", False), ("B", True)]


def test_substitution_applies_to_every_string_and_types_follow(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "version: 1\nname: ${NAME:-envy}\nprovider: standard-webhooks\n"
        'verify:\n  secret: ["${OLD}", "${NEW}"]\n  tolerance_s: ${TOLERANCE:-120}\n'
        'table: ${TABLE}\naction: create\nlead:\n  data:\n    source: {value: "${SOURCE:-web}"}\n',
    )
    environ = {"OLD": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "NEW": "whsec_c2Vjb25k", "TABLE": "t-7"}
    mapping = load_mappings(path, environ).get("envy")
    assert mapping is not None
    assert mapping.table == "t-7"
    assert mapping.provider.options.tolerance_s == 120
    assert len(mapping.provider.options.secret) == 2
    assert mapping.env_values == {**environ, "NAME": "envy", "TOLERANCE": "120", "SOURCE": "web"}


def test_missing_variable_names_file_line_and_variable_never_a_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "version: 1\nname: n\nprovider: standard-webhooks\nverify:\n  secret: ${WEBHOOK_SECRET}\n"
        "table: t\naction: create\n",
    )
    with pytest.raises(MappingValidationError) as caught:
        load_mappings(path, {"OTHER": "s3cr3t-value"})
    assert caught.value.problems == [
        f"{path}:5: verify.secret: environment variable WEBHOOK_SECRET is not set and has no default"
    ]


def test_secrets_never_appear_in_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "version: 1\nname: n\nprovider: standard-webhooks\nverify:\n  secret: ${S}\n  tolerance_s: ${S}\n"
        "table: t\naction: create\n",
    )
    with pytest.raises(MappingValidationError) as caught:
        load_mappings(path, {"S": "hunter2-very-secret"})
    assert caught.value.problems
    assert "hunter2" not in str(caught.value)


def test_read_env_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "x.env", "# demo\n\nA=1\nexport B = two words \nC=\"quoted # not a comment\"\nD='x'\n"
    )
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": "quoted # not a comment", "D": "x"}
    write(tmp_path, "bad.env", "A=1\njust words\n")
    with pytest.raises(ValueError, match=r"bad.env:2: expected KEY=VALUE"):
        read_env_file(tmp_path / "bad.env")


def test_read_env_file_resolves_references_in_values(tmp_path: Path) -> None:
    text = (
        "BASE=${HOST:-http://127.0.0.1:8010}/graph\n"
        'URL="${BASE}/v21.0"\n'  # a line above counts
        "RAW='${BASE}'\n"  # single quotes: as written
        "ESCAPED=$${NOT_A_REFERENCE}\n"
    )
    path = write(tmp_path, "refs.env", text)
    assert read_env_file(path) == {
        "BASE": "http://127.0.0.1:8010/graph",
        "URL": "http://127.0.0.1:8010/graph/v21.0",
        "RAW": "${BASE}",
        "ESCAPED": "${NOT_A_REFERENCE}",
    }
    assert (
        read_env_file(path, {"HOST": "http://127.0.0.1:9999"})["URL"] == "http://127.0.0.1:9999/graph/v21.0"
    )
    write(tmp_path, "missing.env", "A=1\nB=${NOWHERE}/x\n")
    with pytest.raises(ValueError, match=r"missing.env:2: B: variable NOWHERE is not set and has no default"):
        read_env_file(tmp_path / "missing.env")


def test_yaml_timestamps_and_merge_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "version: 1\nname: m\nprovider: none\nverify: {insecure: true}\ntable: t\naction: create\n"
        "x-common: &common {then: [trim]}\nlead:\n  data:\n    since: {value: 2025-07-01}\n",
    )
    # the unknown top-level key is still an error (no silent extensions) ...
    with pytest.raises(MappingValidationError, match=r"m.yaml:7: x-common: unknown key"):
        load_mappings(path, {})
    path.write_text(path.read_text().replace("x-common: &common {then: [trim]}\n", ""))
    mapping = load_mappings(path, {}).get("m")
    assert mapping is not None
    assert mapping.spec.lead.data["since"].value == "2025-07-01"  # type: ignore[union-attr]


# --- JSON Schema ------------------------------------------------------------------------------------


def test_schema_json_is_current() -> None:
    committed = (ROOT / "mappings" / "schema.json").read_text()
    assert committed == render(), "regenerate: python -m bridge.mapping.schema > mappings/schema.json"


def test_schema_describes_the_format() -> None:
    schema = json.loads(render())
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"version", "name", "provider", "table", "action"}
    assert "standard-webhooks" in schema["properties"]["provider"]["enum"]
    value_object = schema["$defs"]["ValueObject"]
    assert value_object["additionalProperties"] is False
    assert {
        "path",
        "value",
        "template",
        "with",
        "then",
        "map",
        "default",
        "required",
        "when",
        "on_null",
    } <= set(value_object["properties"])
    text = json.dumps(schema)
    assert "phone_e164" in text
    assert "datetime" in text
    branch = next(
        b for b in schema["allOf"] if b["if"]["properties"]["provider"]["const"] == "standard-webhooks"
    )
    verify_ref = branch["then"]["properties"]["verify"]["$ref"].rsplit("/", 1)[-1]
    assert "secret" in schema["$defs"][verify_ref]["properties"]


def test_substitution_in_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        BASE.format(name="keys")
        + "  custom_fields:\n    ${BUDGET_FIELD}: budget\n    ${OTHER:-Source}: src\n",
    )
    mapping = load_mappings(path, {"BUDGET_FIELD": "9a8b-01"}).get("keys")
    assert mapping is not None
    assert list(mapping.spec.lead.custom_fields) == ["9a8b-01", "Source"]
    with pytest.raises(MappingValidationError) as caught:
        load_mappings(path, {})
    assert caught.value.problems == [
        f"{path}:11: lead.custom_fields: environment variable BUDGET_FIELD is not set and has no default"
    ]
