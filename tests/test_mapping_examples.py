"""Every shipped mapping (mappings/*.yaml) runs on its sample payload and gives the expected commands.

Convention, for a mapping named NAME (its `name:`), under tests/fixtures/payloads/:
    NAME.json | NAME.xml | NAME.form | NAME.txt   the request body (required; the first found is used)
    NAME.headers.json     request headers, e.g. {"content-type": "..."} (optional; else from the extension)
    NAME.enrich.json      the JSON every enrich fetch returns (required when the mapping has `enrich`)
    NAME.expected.json    the lead commands, a list of LeadCommand objects (required)
Each mapping is loaded with the demo environment of mappings/sandbox.env, its body parsed with its
provider's `reparse` (as the worker does), and planned. Regenerate an expected file with
`leadbridge mappings test NAME tests/fixtures/payloads/NAME.json` after checking its output.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import MappingValidationError
from bridge.mapping import LeadCommand, load_mappings
from bridge.mapping.env import read_env_file, references
from bridge.mapping_cli import guess_content_type, validate

ROOT = Path(__file__).parent.parent
MAPPINGS = ROOT / "mappings"
PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
BODY_SUFFIXES = (".json", ".xml", ".form", ".txt")
SHIPPED = sorted(path for path in MAPPINGS.glob("*.y*ml") if path.suffix in (".yaml", ".yml"))


def sandbox_env() -> dict[str, str]:
    return read_env_file(MAPPINGS / "sandbox.env")


def fixture(name: str, suffix: str) -> Path:
    return PAYLOADS / f"{name}{suffix}"


class FixtureFetcher:
    def __init__(self, record: Any) -> None:
        self.record = record
        self.urls: list[str] = []

    async def __call__(self, url: str, headers: Mapping[str, str], timeout_s: float | None = None) -> Any:
        self.urls.append(url)
        return json.loads(json.dumps(self.record))  # a fresh copy per fetch


def test_there_are_shipped_mappings() -> None:
    assert any(path.name == "website-contact.yaml" for path in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
async def test_shipped_mapping_on_its_sample_payload(path: Path) -> None:
    try:
        mappings = load_mappings(path, sandbox_env())
    except MappingValidationError as exc:
        pytest.fail(f"{path.name} does not load with mappings/sandbox.env:\n" + "\n".join(exc.problems))
    (mapping,) = list(mappings)
    name = mapping.name
    bodies = [fixture(name, suffix) for suffix in BODY_SUFFIXES if fixture(name, suffix).is_file()]
    if not bodies:
        pytest.fail(
            f"missing sample payload tests/fixtures/payloads/{name}.json (or .xml/.form/.txt) for {path.name}"
        )
    expected_file = fixture(name, ".expected.json")
    if not expected_file.is_file():
        pytest.fail(f"missing tests/fixtures/payloads/{name}.expected.json for {path.name}")
    body_file = bodies[0]
    headers_file = fixture(name, ".headers.json")
    raw_headers = json.loads(headers_file.read_text()) if headers_file.is_file() else {}
    headers = {str(key).lower(): str(value) for key, value in raw_headers.items()}
    headers.setdefault("content-type", guess_content_type(body_file))
    payload = mapping.provider.reparse(body_file.read_bytes(), headers)

    fetcher = None
    if mapping.enrich is not None:
        enrich_file = fixture(name, ".enrich.json")
        if not enrich_file.is_file():
            pytest.fail(f"missing tests/fixtures/payloads/{name}.enrich.json ({path.name} has `enrich`)")
        fetcher = FixtureFetcher(json.loads(enrich_file.read_text()))
    plan = await mapping.plan(payload, enrich=fetcher)

    expected = [
        LeadCommand.model_validate(item).model_dump(mode="json")
        for item in json.loads(expected_file.read_text())
    ]
    got = [command.model_dump(mode="json") for command in plan.commands]
    assert got == expected, f"{name}: got\n{json.dumps(got, indent=2)}"
    assert got, f"{name}: the sample payload should make at least one command"
    if fetcher is not None:
        assert fetcher.urls
        assert all(url.startswith(("https://", "http://")) for url in fetcher.urls)


def test_sandbox_env_defines_every_variable_the_shipped_mappings_need() -> None:
    defined = sandbox_env()
    needed = {
        (path.name, name)
        for path in SHIPPED
        for line in path.read_text().splitlines()
        if not line.lstrip().startswith("#")
        for name, has_default in references(line)
        if not has_default
    }
    missing = sorted(f"{file}: {name}" for file, name in needed if name not in defined)
    assert not missing, "add to mappings/sandbox.env: " + ", ".join(missing)


def test_the_shipped_folder_validates_as_a_whole() -> None:
    out = io.StringIO()
    code = validate(MAPPINGS, sandbox_env(), out)
    assert code == 0, out.getvalue()
    assert f"{len(SHIPPED)} mapping" in out.getvalue().splitlines()[-1]


def test_the_demo_secret_is_a_valid_standard_webhooks_secret() -> None:
    from bridge.providers.standard_webhooks import decode_secret

    secret = sandbox_env()["WEBSITE_CONTACT_SECRET"]
    assert secret.startswith("whsec_")
    assert len(decode_secret(secret.encode())) >= 24
