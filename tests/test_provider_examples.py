"""The shipped provider examples: one mapping per provider, each with its sample payload, whose
`verify:` options build with the sandbox values and whose sample parses to an event id.

(The mapping engine runs these samples against `<name>.expected.json` in test_mapping_examples.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.mapping.commands import LeadCommand
from bridge.providers import PROVIDERS, InboundRequest, Verified, build_provider
from bridge.providers.base import MAX_EVENT_ID_CHARS, body_hash

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
PAYLOADS = ROOT / "tests" / "fixtures" / "payloads"
SANDBOX_ENV = ROOT / "tests" / "fixtures" / "providers" / "sandbox.env"
DEMO_TABLE = "2b7c9a54-3f1e-4c8a-9d6b-1a2b3c4d5e6f"
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")

# mapping name -> the event id its sample must get (None: a hash of the body)
EXAMPLES: dict[str, str | None] = {
    "typeform-demo-request": "01HXQ8Z4WJ3N5Y2K7T1R6M0XCA",
    "tally-newsletter": "a4cb511e-d513-4fa5-baee-b815d718dfd1",
    "close-lead-status": "ev_2wPCm8d6Dz7GxfQ9bJ3nVo",
    "webflow-contact-form": "form_submission:6321ca84df3949bfc6752327",
    "calendly-booking": "invitee.created:https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/"
    "AAAAAAAAAAAAAAAA:2024-05-14T17:51:19.000000Z",
    "meta-lead-ads-form": None,
    "hubspot-contact-sync": "62515:24801:1001,62515:24802:1002",
    "pipedrive-person-sync": "6ba407fc-006d-4556-9804-8298e584a288",
    "jotform-quote-request": "5912345678901234567",
    "salesforce-lead-outbound": "04l5g00000ABcDeAAF,04l5g00000ABcDfAAF",
    "standard-webhooks-signup": "msg_from_the_webhook_id_header",
    "hmac-google-forms": None,
    "basic-auth-gravity-forms": None,
    "token-unbounce": None,
}


def sandbox_env() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in SANDBOX_ENV.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def load(name: str) -> tuple[dict[str, Any], set[str]]:
    """The mapping file with ${VAR}s replaced by the sandbox values, and the variables it uses."""
    text = (MAPPINGS / f"{name}.yaml").read_text()
    env = sandbox_env()
    used = {match.group(1) for match in VARIABLE.finditer(text) if match.group(2) is None}

    def value(match: re.Match[str]) -> str:
        default = match.group(2)
        return env[match.group(1)] if default is None else env.get(match.group(1), default[2:])

    return yaml.safe_load(VARIABLE.sub(value, text)), used


def sample(name: str) -> tuple[bytes, dict[str, str]]:
    body_file = next(
        path
        for path in sorted(PAYLOADS.glob(f"{name}.*"))
        if not path.name.endswith((".headers.json", ".expected.json", ".enrich.json"))
    )
    headers_file = PAYLOADS / f"{name}.headers.json"
    headers = (
        json.loads(headers_file.read_text())
        if headers_file.exists()
        else {"content-type": "application/json"}
    )
    return body_file.read_bytes(), headers


def verified(provider: Any, body: bytes, headers: dict[str, str]) -> Verified:
    request = InboundRequest(method="POST", url="", path="", query={}, headers=headers, body=body)
    # standard-webhooks takes its id from the signed `webhook-id` header, learned in verify()
    return Verified(
        request=request, provider=provider.name, facts={"event_id": "msg_from_the_webhook_id_header"}
    )


def test_every_provider_but_none_has_an_example() -> None:
    providers = {load(name)[0]["provider"] for name in EXAMPLES}
    assert providers == set(PROVIDERS) - {"none"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_named_after_its_provider_and_targets_the_demo_pool(name: str) -> None:
    spec, _ = load(name)
    assert spec["version"] == 1
    assert spec["name"] == name
    assert name.startswith(spec["provider"] + "-")
    assert spec["table"] == DEMO_TABLE


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_secrets_come_from_variables_without_defaults(name: str) -> None:
    text = (MAPPINGS / f"{name}.yaml").read_text()
    _, used = load(name)
    assert used, "secrets are given as ${VAR}"
    assert used <= set(sandbox_env())
    raw = yaml.safe_load(text)
    for option, value in raw["verify"].items():
        if option in ("secret", "app_secret", "verify_token", "password", "token"):
            assert isinstance(value, str)
            match = VARIABLE.fullmatch(value)
            assert match, f"verify.{option} must be a ${{VAR}}"
            assert match.group(2) is None, f"verify.{option}: no ${{VAR:-default}} for a secret"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_sample_parses_and_gets_its_event_id(name: str) -> None:
    spec, _ = load(name)
    provider = build_provider(spec["provider"], spec["verify"])
    body, headers = sample(name)
    payload = provider.reparse(body, headers)
    assert payload
    event_id = provider.event_id(verified(provider, body, headers), payload)
    assert event_id == (EXAMPLES[name] or body_hash(body))
    assert len(event_id) <= MAX_EVENT_ID_CHARS


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_expected_commands_are_lead_commands(name: str) -> None:
    expected = json.loads((PAYLOADS / f"{name}.expected.json").read_text())
    assert isinstance(expected, list)
    assert expected
    for index, command in enumerate(expected):
        parsed = LeadCommand.model_validate(command)
        assert (parsed.mapping, parsed.index, parsed.table) == (name, index, DEMO_TABLE)


def test_meta_example_has_its_graph_api_answer() -> None:
    record = json.loads((PAYLOADS / "meta-lead-ads-form.enrich.json").read_text())
    names = {field["name"] for field in record["field_data"]}
    assert {"email", "full_name"} <= names
    spec, _ = load("meta-lead-ads-form")
    assert spec["enrich"]["url"].startswith(sandbox_env()["META_GRAPH_URL"] + "/{value.leadgen_id}")
    assert spec["enrich"]["headers"]["Authorization"] == "Bearer " + sandbox_env()["META_PAGE_TOKEN"]
