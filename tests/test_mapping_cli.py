"""`mappings validate` and `mappings test` (dry run): output lines and exit codes."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.mapping.env import read_env_file
from bridge.mapping_cli import dry_run, guess_content_type, validate

ROOT = Path(__file__).parent.parent
PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
SANDBOX_ENV = read_env_file(ROOT / "mappings" / "sandbox.env")

GOOD = """\
version: 1
name: {name}
provider: none
verify: {{insecure: true}}
table: t1
action: create
lead:
  data:
    email: {{path: email, then: [email], required: true}}
"""


def run_validate(path: Path, environ: dict[str, str] | None = None) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = validate(path, environ or {}, out)
    return code, out.getvalue().splitlines()


def run_dry(
    name: str,
    payload: Path,
    mappings: Path,
    headers: dict[str, str] | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[int, str]:
    out = io.StringIO()
    code = dry_run(name, payload, headers or {}, mappings, environ or {}, out)
    return code, out.getvalue()


def test_validate_ok_names_each_mapping_and_prints_warnings(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.format(name="alpha"))
    (tmp_path / "b.yaml").write_text(GOOD.format(name="beta"))
    code, lines = run_validate(tmp_path)
    assert code == 0
    assert lines == [
        f"warning: {tmp_path / 'a.yaml'}:3: provider: provider none accepts unverified requests",
        f"warning: {tmp_path / 'b.yaml'}:3: provider: provider none accepts unverified requests",
        f"ok: alpha ({tmp_path / 'a.yaml'}: none, create, table t1)",
        f"ok: beta ({tmp_path / 'b.yaml'}: none, create, table t1)",
        "2 mappings valid",
    ]


def test_validate_errors_exit_1_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.format(name="alpha").replace("then: [email]", "then: [emale]"))
    (tmp_path / "b.yaml").write_text(GOOD.format(name="beta").replace("table: t1", "table: ${TABLE}"))
    code, lines = run_validate(tmp_path)
    assert code == 1
    assert lines[0].startswith(
        f"error: {tmp_path / 'a.yaml'}:9: lead.data.email.then[0]: unknown transform 'emale'"
    )
    assert lines[1] == (
        f"error: {tmp_path / 'b.yaml'}:5: table: environment variable TABLE is not set and has no default"
    )
    assert lines[-1] == f"2 problems in {tmp_path}: fix them and run validate again"
    assert not any(line.startswith("ok:") for line in lines)


def test_validate_the_shipped_demo_mapping() -> None:
    code, lines = run_validate(ROOT / "mappings" / "website-contact.yaml", SANDBOX_ENV)
    assert code == 0, lines
    assert lines[-2].startswith("ok: website-contact (")
    assert SANDBOX_ENV["WEBSITE_CONTACT_SECRET"] not in "\n".join(lines)


def test_validate_missing_path(tmp_path: Path) -> None:
    code, lines = run_validate(tmp_path / "nope")
    assert code == 1
    assert lines[0] == f"error: {tmp_path / 'nope'}: no such file or folder"


def test_dry_run_prints_the_plan_as_json() -> None:
    code, output = run_dry(
        "website-contact",
        PAYLOADS / "website-contact.json",
        ROOT / "mappings" / "website-contact.yaml",
        environ=SANDBOX_ENV,
    )
    assert code == 0, output
    plan = json.loads(output)
    assert plan["ignored"] is False
    assert plan["commands"] == json.loads((PAYLOADS / "website-contact.expected.json").read_text())
    assert SANDBOX_ENV["WEBSITE_CONTACT_SECRET"] not in output


def test_dry_run_ignored_payload(tmp_path: Path) -> None:
    payload = tmp_path / "other.json"
    payload.write_text('{"type": "contact.deleted", "data": {}}')
    code, output = run_dry("website-contact", payload, ROOT / "mappings", environ=SANDBOX_ENV)
    assert code == 0
    assert json.loads(output) == {"ignored": True, "commands": []}


@pytest.mark.parametrize(
    ("suffix", "content_type"),
    [
        (".json", "application/json"),
        (".xml", "text/xml"),
        (".form", "application/x-www-form-urlencoded"),
        (".txt", "text/plain"),
        (".bin", "application/json"),
    ],
)
def test_guess_content_type(suffix: str, content_type: str) -> None:
    assert guess_content_type(Path("payload" + suffix)) == content_type


def test_dry_run_errors_are_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.format(name="alpha"))
    good = tmp_path / "p.json"
    good.write_text('{"email": "not-an-address"}')
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")

    code, output = run_dry("ghost", good, tmp_path)
    assert (code, output) == (1, f"error: no valid mapping named 'ghost' in {tmp_path} (valid: alpha)\n")

    code, output = run_dry("alpha", tmp_path / "missing.json", tmp_path)
    assert (code, output) == (
        1,
        f"error: cannot read {tmp_path / 'missing.json'}: No such file or directory\n",
    )

    code, output = run_dry("alpha", bad_json, tmp_path)
    assert (code, output) == (
        1,
        f"error: {bad_json} does not parse for provider none: body is not valid JSON\n",
    )

    code, output = run_dry("alpha", good, tmp_path)
    assert (code, output) == (1, "error: mapping alpha: lead.data.email is required but resolved to null\n")
    assert "not-an-address" not in output


def test_dry_run_reports_invalid_mappings(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.format(name="alpha").replace("table: t1", "table: ${T}"))
    payload = tmp_path / "p.json"
    payload.write_text("{}")
    code, output = run_dry("alpha", payload, tmp_path)
    assert code == 1
    assert output.splitlines() == [
        f"error: {tmp_path / 'a.yaml'}:5: table: environment variable T is not set and has no default",
        f"error: no valid mapping named 'alpha' in {tmp_path} (valid: none)",
    ]


def test_dry_run_prints_enrich_requests_with_secrets_redacted(tmp_path: Path) -> None:
    (tmp_path / "meta.yaml").write_text(
        "version: 1\nname: meta\nprovider: none\nverify: {insecure: true}\ntable: t\naction: create\n"
        "each: entry[].changes[].value\n"
        "enrich:\n  url: https://graph.example/v21.0/{leadgen_id}?access_token=${PAGE_TOKEN}\n"
        '  headers: {Authorization: "Bearer ${PAGE_TOKEN}", X-Trace: abc}\n  as: lead\n'
        "lead:\n  data:\n    leadgen: leadgen_id\n    email: lead.email\n"
    )
    payload = tmp_path / "meta.json"
    payload.write_text('{"entry": [{"changes": [{"value": {"leadgen_id": "123 4"}}]}]}')
    code, output = run_dry("meta", payload, tmp_path, environ={"PAGE_TOKEN": "EAAG-page-token-secret"})
    assert code == 0, output
    first, *rest = output.splitlines()
    assert first == (
        "enrich: would GET https://graph.example/v21.0/123%204?access_token=${PAGE_TOKEN} "
        "(Authorization: ***, X-Trace: ***) (not fetched: null)"
    )
    assert "EAAG" not in output
    plan = json.loads("\n".join(rest))
    assert plan["commands"][0]["data"] == {"leadgen": "123 4"}


@pytest.mark.parametrize(
    ("headers", "content_type"),
    [
        ({"Content-Type": "application/json"}, "application/json"),
        ({}, "text/xml"),
        ({"X-Other": "1"}, "text/xml"),
    ],
)
def test_dry_run_gives_reparse_the_header_or_the_guessed_content_type(
    headers: dict[str, str], content_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.providers.none import NoneProvider

    seen: list[dict[str, str]] = []

    def reparse(self: NoneProvider, body: bytes, given: Mapping[str, str]) -> Any:
        seen.append(dict(given))
        return {"email": "A@B.io"}

    monkeypatch.setattr(NoneProvider, "reparse", reparse)
    (tmp_path / "a.yaml").write_text(GOOD.format(name="alpha"))
    payload = tmp_path / "p.xml"
    payload.write_text("<ignored/>")
    code, output = run_dry("alpha", payload, tmp_path, headers=headers)
    assert code == 0, output
    assert seen[0]["content-type"] == content_type
    assert all(key == key.lower() for key in seen[0])
    assert json.loads(output)["commands"][0]["data"] == {"email": "a@b.io"}


# -- --resolve: the request bodies, names resolved against the table --------------------------


def run_resolved(name: str, payload: Path, mappings: Path, environ: Mapping[str, str]) -> tuple[int, str]:
    from bridge.mapping_cli import Upstream
    from bridge.sandbox import DEMO_API_KEY, create_sandbox_app

    sandbox = Upstream("http://sandbox", DEMO_API_KEY, httpx.ASGITransport(app=create_sandbox_app()))
    out = io.StringIO()
    code = dry_run(name, payload, {}, mappings, environ, out, resolve=sandbox)
    return code, out.getvalue()


def test_resolve_shows_the_bodies_with_ids_from_the_table() -> None:
    code, output = run_resolved(
        "website-contact", PAYLOADS / "website-contact.json", ROOT / "mappings", SANDBOX_ENV
    )
    assert code == 0, output
    shown = json.loads(output)
    assert shown["commands"] == json.loads((PAYLOADS / "website-contact.expected.json").read_text())
    (requests,) = shown["requests"]  # an upsert: a create if the record is new, else a patch
    create = requests["create"]["POST /connect/table_entries"]
    assert create["leadStateId"] == "6f1d2c3b-8a4e-4b5f-9c6d-7e8f9a0b1c01"  # the default, New
    assert set(create["customFieldData"]) <= {
        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c01",  # Budget
        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c02",  # Company
        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c03",  # Source
    }
    assert create["customFieldData"]["9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c03"] == "website"
    patch = requests["patch"]["PATCH /connect/table_entries/{id}"]
    assert "leadStateId" not in patch  # no `state:`: a lead further along keeps its state
    assert patch["customFieldData"]["9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c03"] == "website"


def test_resolve_names_an_unknown_state_or_field_as_delivery_would(tmp_path: Path) -> None:
    table = "2b7c9a54-3f1e-4c8a-9d6b-1a2b3c4d5e6f"
    mapping = GOOD.format(name="wrong").replace("table: t1", f"table: {table}")
    (tmp_path / "wrong.yaml").write_text(mapping + "  custom_fields:\n    Favourite colour: {value: blue}\n")
    payload = tmp_path / "p.json"
    payload.write_text('{"email": "a@example.com"}')
    code, output = run_resolved("wrong", payload, tmp_path, {})
    assert code == 1
    assert output == f"error: mapping wrong: table {table} has no custom field 'Favourite colour'\n"


def test_resolve_of_a_table_the_upstream_does_not_know_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "gone.yaml").write_text(GOOD.format(name="gone"))  # table t1: not in the sandbox
    payload = tmp_path / "p.json"
    payload.write_text('{"email": "a@example.com"}')
    code, output = run_resolved("gone", payload, tmp_path, {})
    assert code == 1
    assert output.startswith("error: --resolve: cannot read the table: GET tables answered 404")
    assert output.count("\n") == 1
