"""Signed providers, one table: each request is signed here from the vendor's published algorithm
(never with the adapter's code), then verified, parsed and given its event id by the adapter.

Every case checks: the signed sample is accepted and parsed; one flipped byte in the body or in
the signature, a wrong secret and each missing header are 401; stale and future timestamps are
401 where the scheme is timed; a rotated secret list accepts either secret; a content type the
vendor never sends is 415. Published test vectors follow the table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.errors import InvalidBody, Unauthorized, UnsupportedMediaType
from bridge.providers import InboundRequest, build_provider
from bridge.providers.base import MAX_EVENT_ID_CHARS, body_hash

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
NOW_S = 1_715_690_000.0
URL = "https://leads.example.com/hooks/sample"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def mac(key: bytes | str, message: bytes, algorithm: str = "sha256") -> bytes:
    key_bytes = key.encode() if isinstance(key, str) else key
    return hmac.new(key_bytes, message, getattr(hashlib, algorithm)).digest()


def request(
    body: bytes,
    headers: dict[str, str],
    *,
    method: str = "POST",
    url: str = URL,
    query: dict[str, str] | None = None,
) -> InboundRequest:
    return InboundRequest(
        method=method,
        url=url,
        path="/hooks/sample",
        query=query or {},
        headers={name.lower(): value for name, value in headers.items()},
        body=body,
    )


def flip_last_alnum(value: str) -> str:
    """Change the last letter or digit to another one of its kind (never just its case)."""
    for index in range(len(value) - 1, -1, -1):
        char = value[index]
        if char.isdigit():
            return value[:index] + str((int(char) + 1) % 10) + value[index + 1 :]
        if char.isalpha() and char.isascii():
            base = ord("a") if char.islower() else ord("A")
            return value[:index] + chr(base + (ord(char) - base + 1) % 26) + value[index + 1 :]
    raise AssertionError("nothing to flip")


# --- the vendors' algorithms, written from their docs ---------------------------------------------

Signer = Callable[[bytes, str, float], dict[str, str]]


def sign_typeform(body: bytes, secret: str, now_s: float) -> dict[str, str]:
    return {"Content-Type": "application/json", "Typeform-Signature": "sha256=" + b64(mac(secret, body))}


def sign_tally(body: bytes, secret: str, now_s: float) -> dict[str, str]:
    return {"Content-Type": "application/json", "Tally-Signature": b64(mac(secret, body))}


def sign_close(body: bytes, secret: str, now_s: float) -> dict[str, str]:
    timestamp = str(int(now_s))
    signature = mac(bytes.fromhex(secret), timestamp.encode() + body).hex()
    return {"Content-Type": "application/json", "close-sig-hash": signature, "close-sig-timestamp": timestamp}


def sign_webflow(body: bytes, secret: str, now_s: float) -> dict[str, str]:
    timestamp = str(int(now_s * 1000))
    signature = mac(secret, f"{timestamp}:".encode() + body).hex()
    return {
        "Content-Type": "application/json",
        "x-webflow-timestamp": timestamp,
        "x-webflow-signature": signature,
    }


def sign_calendly(body: bytes, secret: str, now_s: float) -> dict[str, str]:
    t = str(int(now_s))
    signature = mac(secret, f"{t}.".encode() + body).hex()
    return {"Content-Type": "application/json", "Calendly-Webhook-Signature": f"t={t},v1={signature}"}


def sign_meta(body: bytes, secret: str, now_s: float) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + mac(secret, body).hex()}


def sign_standard(body: bytes, secret: str, now_s: float) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, timestamp = "msg_2gZ3k9QmX1pR7tY5uV8wA0bC4d", str(int(now_s))
    signature = b64(mac(key, f"{msg_id}.{timestamp}.".encode() + body))
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": f"v1,{signature}",
    }


def sign_apps_script(body: bytes, secret: str, now_s: float) -> dict[str, str]:
    """The Google Forms recipe: base64 HMAC-SHA256 of "<X-Timestamp>.<body>"."""
    timestamp = str(int(now_s))
    return {
        "Content-Type": "application/json",
        "X-Timestamp": timestamp,
        "X-Signature": b64(mac(secret, f"{timestamp}.".encode() + body)),
    }


def sign_hubspot_v3(body: bytes, secret: str, now_s: float) -> dict[str, str]:
    timestamp = str(int(now_s * 1000))
    signature = b64(mac(secret, f"POST{URL}".encode() + body + timestamp.encode()))
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": signature,
        "X-HubSpot-Request-Timestamp": timestamp,
    }


@dataclass(frozen=True)
class Case:
    provider: str
    fixture: str
    sign: Signer
    secrets: tuple[str, str]  # (old, new)
    options: Callable[[Any], dict[str, Any]]
    signature_header: str
    headers: tuple[str, ...]  # every header the scheme needs
    event_id: str | None  # None: a hash of the body
    tolerance_s: float | None = None  # None: the scheme signs no timestamp
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.provider


def secret_option(name: str = "secret", **more: Any) -> Callable[[Any], dict[str, Any]]:
    return lambda secret: {name: secret, **more}


CASES = [
    Case(
        "typeform",
        "typeform-demo-request",
        sign_typeform,
        ("typeform-old-secret", "typeform-new-secret"),
        secret_option(),
        "Typeform-Signature",
        ("Typeform-Signature",),
        "01HXQ8Z4WJ3N5Y2K7T1R6M0XCA",
    ),
    Case(
        "tally",
        "tally-newsletter",
        sign_tally,
        ("tally-old-secret", "tally-new-secret"),
        secret_option(),
        "Tally-Signature",
        ("Tally-Signature",),
        "a4cb511e-d513-4fa5-baee-b815d718dfd1",
    ),
    Case(
        "close",
        "close-lead-status",
        sign_close,
        (b"close old key".hex(), b"close new key".hex()),
        secret_option(),
        "close-sig-hash",
        ("close-sig-hash", "close-sig-timestamp"),
        "ev_2wPCm8d6Dz7GxfQ9bJ3nVo",
        tolerance_s=300,
    ),
    Case(
        "webflow",
        "webflow-contact-form",
        sign_webflow,
        ("webflow-old-secret", "webflow-new-secret"),
        secret_option(),
        "x-webflow-signature",
        ("x-webflow-signature", "x-webflow-timestamp"),
        "form_submission:6321ca84df3949bfc6752327",
        tolerance_s=300,
    ),
    Case(
        "calendly",
        "calendly-booking",
        sign_calendly,
        ("calendly-old-key", "calendly-new-key"),
        secret_option(),
        "Calendly-Webhook-Signature",
        ("Calendly-Webhook-Signature",),
        "invitee.created:https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/AAAAAAAAAAAAAAAA:"
        "2024-05-14T17:51:19.000000Z",
        tolerance_s=180,
    ),
    Case(
        "meta-lead-ads",
        "meta-lead-ads-form",
        sign_meta,
        ("meta-old-app-secret", "meta-new-app-secret"),
        lambda secret: {"app_secret": secret, "verify_token": "tok"},
        "X-Hub-Signature-256",
        ("X-Hub-Signature-256",),
        None,
    ),
    Case(
        "standard-webhooks",
        "standard-webhooks-signup",
        sign_standard,
        ("whsec_" + b64(b"old standard webhooks key"), "whsec_" + b64(b"new standard webhooks key")),
        secret_option(),
        "webhook-signature",
        ("webhook-id", "webhook-timestamp", "webhook-signature"),
        "msg_2gZ3k9QmX1pR7tY5uV8wA0bC4d",
        tolerance_s=300,
    ),
    Case(
        "hmac",
        "hmac-google-forms",
        sign_apps_script,
        ("apps-script-old-secret", "apps-script-new-secret"),
        secret_option(
            header="X-Signature",
            encoding="base64",
            signed="{timestamp}.{body}",
            timestamp_header="X-Timestamp",
        ),
        "X-Signature",
        ("X-Signature", "X-Timestamp"),
        None,
        tolerance_s=300,
    ),
    Case(
        "hubspot",
        "hubspot-contact-sync",
        sign_hubspot_v3,
        ("hubspot-old-client-secret", "hubspot-new-client-secret"),
        secret_option(),
        "X-HubSpot-Signature-v3",
        ("X-HubSpot-Signature-v3", "X-HubSpot-Request-Timestamp"),
        "62515:24801:1001,62515:24802:1002",
        tolerance_s=300,
    ),
]


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


def body_of(case: Case) -> bytes:
    return (PAYLOADS / f"{case.fixture}.json").read_bytes()


def signed(
    case: Case, *, secret: str | None = None, now_s: float = NOW_S, body: bytes | None = None
) -> InboundRequest:
    raw = body_of(case) if body is None else body
    return request(raw, case.sign(raw, case.secrets[1] if secret is None else secret, now_s))


def provider_for(case: Case, secret: Any = None) -> Any:
    return build_provider(case.provider, case.options(case.secrets[1] if secret is None else secret))


def test_signed_sample_is_accepted_parsed_and_identified(case: Case) -> None:
    provider = provider_for(case)
    verified = provider.verify(signed(case), NOW_S)
    payload = provider.parse(verified)
    assert payload == json.loads(body_of(case))
    expected_id = case.event_id or body_hash(body_of(case))
    assert provider.event_id(verified, payload) == expected_id
    assert len(expected_id) <= MAX_EVENT_ID_CHARS


def test_the_same_event_signed_again_has_the_same_event_id(case: Case) -> None:
    """A provider retry is signed anew (new timestamp) but must dedupe to the same id."""
    provider = provider_for(case)
    first = provider.verify(signed(case, now_s=NOW_S), NOW_S)
    retry = provider.verify(signed(case, now_s=NOW_S + 60), NOW_S + 60)
    assert provider.event_id(first, provider.parse(first)) == provider.event_id(retry, provider.parse(retry))


def test_one_flipped_body_byte_is_unauthorized(case: Case) -> None:
    good = signed(case)
    body = bytearray(good.body)
    body[len(body) // 2] ^= 0x01
    with pytest.raises(Unauthorized):
        provider_for(case).verify(request(bytes(body), dict(good.headers)), NOW_S)


def test_one_flipped_signature_byte_is_unauthorized(case: Case) -> None:
    headers = dict(signed(case).headers)
    name = case.signature_header.lower()
    headers[name] = flip_last_alnum(headers[name])
    with pytest.raises(Unauthorized):
        provider_for(case).verify(request(body_of(case), headers), NOW_S)


def test_wrong_secret_is_unauthorized(case: Case) -> None:
    with pytest.raises(Unauthorized):
        provider_for(case).verify(signed(case, secret=case.secrets[0]), NOW_S)


def test_each_missing_header_is_unauthorized(case: Case) -> None:
    for missing in case.headers:
        headers = {k: v for k, v in signed(case).headers.items() if k != missing.lower()}
        with pytest.raises(Unauthorized):
            provider_for(case).verify(request(body_of(case), headers), NOW_S)


def test_empty_signature_header_is_unauthorized(case: Case) -> None:
    headers = dict(signed(case).headers) | {case.signature_header.lower(): ""}
    with pytest.raises(Unauthorized):
        provider_for(case).verify(request(body_of(case), headers), NOW_S)


@pytest.mark.parametrize("case", [c for c in CASES if c.tolerance_s is not None], ids=str)
def test_stale_and_future_timestamps_are_unauthorized(case: Case) -> None:
    provider = provider_for(case)
    tolerance = case.tolerance_s
    assert tolerance is not None
    for signed_at in (NOW_S - tolerance + 1, NOW_S + tolerance - 1):
        provider.verify(signed(case, now_s=signed_at), NOW_S)
    for signed_at in (NOW_S - tolerance - 2, NOW_S + tolerance + 2, NOW_S - 86_400, 0.0):
        with pytest.raises(Unauthorized):
            provider.verify(signed(case, now_s=signed_at), NOW_S)


def test_a_rotated_secret_list_accepts_either_secret(case: Case) -> None:
    old, new = case.secrets
    both = provider_for(case, [new, old])
    for secret in (old, new):
        both.verify(signed(case, secret=secret), NOW_S)
    with pytest.raises(Unauthorized):
        provider_for(case, [new]).verify(signed(case, secret=old), NOW_S)


def test_a_content_type_the_vendor_never_sends_is_415(case: Case) -> None:
    good = signed(case)
    for content_type in ("text/plain", "application/xml", ""):
        headers = dict(good.headers) | {"content-type": content_type}
        with pytest.raises(UnsupportedMediaType):
            provider_for(case).verify(request(good.body, headers), NOW_S)


def test_a_signed_body_that_is_not_json_is_invalid_body(case: Case) -> None:
    provider = provider_for(case)
    verified = provider.verify(signed(case, body=b'{"truncated": '), NOW_S)
    with pytest.raises(InvalidBody):
        provider.parse(verified)


def test_empty_secrets_are_refused_at_load_time(case: Case) -> None:
    for bad in ("", [], [""]):
        with pytest.raises(ValidationError):
            provider_for(case, bad)


def test_unknown_options_are_refused(case: Case) -> None:
    with pytest.raises(ValidationError):
        build_provider(case.provider, case.options(case.secrets[1]) | {"secret_typo": "x"})


def test_secrets_do_not_show_in_repr(case: Case) -> None:
    provider = provider_for(case)
    assert case.secrets[1] not in repr(provider.options)
    assert case.secrets[1] not in str(provider.options)


# --- published test vectors and vendor specifics --------------------------------------------------


def test_standard_webhooks_published_vector() -> None:
    """The vector of the Standard Webhooks spec and its reference libraries."""
    provider = build_provider("standard-webhooks", {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
    headers = {
        "content-type": "application/json",
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    verified = provider.verify(request(b'{"test": 2432232314}', headers), 1614265330)
    assert provider.event_id(verified, provider.parse(verified)) == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    several = headers | {
        "webhook-signature": "v1,bm9wZQ== v1a,ignored v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    }
    provider.verify(request(b'{"test": 2432232314}', several), 1614265330)
    with pytest.raises(Unauthorized):
        provider.verify(request(b'{"test": 2432232314}', headers), 1614265330 + 301)


def test_standard_webhooks_secret_must_be_base64() -> None:
    with pytest.raises(ValidationError):
        build_provider("standard-webhooks", {"secret": "whsec_not base64!"})


def test_close_key_must_be_hex_and_is_used_hex_decoded() -> None:
    with pytest.raises(ValidationError):
        build_provider("close", {"secret": "not-hex"})
    # Signing with the hex text itself (not its bytes) must fail: Close keys the HMAC with the bytes.
    secret = b"close key".hex()
    body = b'{"event": {"id": "ev_1"}}'
    headers = {"content-type": "application/json", "close-sig-timestamp": str(int(NOW_S))}
    headers["close-sig-hash"] = mac(secret, headers["close-sig-timestamp"].encode() + body).hex()
    with pytest.raises(Unauthorized):
        build_provider("close", {"secret": secret}).verify(request(body, headers), NOW_S)


def test_webflow_timestamp_is_milliseconds() -> None:
    case = next(c for c in CASES if c.provider == "webflow")
    body = body_of(case)
    timestamp = str(int(NOW_S))  # seconds: read as ms it is January 1970
    headers = {"content-type": "application/json", "x-webflow-timestamp": timestamp}
    headers["x-webflow-signature"] = mac(case.secrets[1], f"{timestamp}:".encode() + body).hex()
    with pytest.raises(Unauthorized):
        provider_for(case).verify(request(body, headers), NOW_S)


def test_webflow_answers_an_exact_200() -> None:
    assert provider_for(next(c for c in CASES if c.provider == "webflow")).accepted_status == 200


def test_calendly_header_with_several_signatures_and_malformed_headers() -> None:
    case = next(c for c in CASES if c.provider == "calendly")
    body = body_of(case)
    t = str(int(NOW_S))
    good = mac(case.secrets[1], f"{t}.".encode() + body).hex()
    provider = provider_for(case)
    provider.verify(
        request(
            body,
            {
                "content-type": "application/json",
                "calendly-webhook-signature": f"t={t},v1={'0' * 64},v1={good}",
            },
        ),
        NOW_S,
    )
    for value in (f"v1={good}", f"t={t}", f"t=,v1={good}", f"t=abc,v1={good}", f"t={t};v1={good}", "garbage"):
        with pytest.raises(Unauthorized):
            provider.verify(
                request(body, {"content-type": "application/json", "calendly-webhook-signature": value}),
                NOW_S,
            )


@pytest.mark.parametrize("provider_name", ["typeform", "meta-lead-ads"])
def test_signatures_without_the_sha256_prefix_are_unauthorized(provider_name: str) -> None:
    case = next(c for c in CASES if c.provider == provider_name)
    headers = dict(signed(case).headers)
    name = case.signature_header.lower()
    headers[name] = headers[name].removeprefix("sha256=")
    with pytest.raises(Unauthorized):
        provider_for(case).verify(request(body_of(case), headers), NOW_S)


def test_hex_signatures_compare_case_insensitively() -> None:
    case = next(c for c in CASES if c.provider == "meta-lead-ads")
    headers = dict(signed(case).headers)
    headers["x-hub-signature-256"] = "sha256=" + headers["x-hub-signature-256"][7:].upper()
    provider_for(case).verify(request(body_of(case), headers), NOW_S)


def test_typeform_event_id_falls_back_to_the_body_hash() -> None:
    case = next(c for c in CASES if c.provider == "typeform")
    body = b'{"event_type": "form_response", "event_id": ["not", "an", "id"]}'
    provider = provider_for(case)
    verified = provider.verify(request(body, case.sign(body, case.secrets[1], NOW_S)), NOW_S)
    assert provider.event_id(verified, provider.parse(verified)) == body_hash(body)


def test_long_event_ids_are_hashed() -> None:
    case = next(c for c in CASES if c.provider == "tally")
    body = json.dumps({"eventId": "x" * 500}).encode()
    provider = provider_for(case)
    verified = provider.verify(request(body, case.sign(body, case.secrets[1], NOW_S)), NOW_S)
    event_id = provider.event_id(verified, provider.parse(verified))
    assert event_id.startswith("sha256:")
    assert len(event_id) <= MAX_EVENT_ID_CHARS


def test_webflow_item_events_are_not_collapsed_onto_the_item_id() -> None:
    # Only a form submission's payload.id names the event; in collection_item_changed (and the
    # other item/user triggers) it is the *item's* id, the same for every change of that item.
    case = next(c for c in CASES if c.provider == "webflow")
    provider = provider_for(case)

    def event_id(payload: dict[str, Any]) -> str:
        body = json.dumps(payload).encode()
        verified = provider.verify(request(body, case.sign(body, case.secrets[1], NOW_S)), NOW_S)
        return str(provider.event_id(verified, provider.parse(verified)))

    def changed(last_updated: str, name: str) -> dict[str, Any]:
        item = {"id": "582b900cba19143b2bb8a759", "collectionId": "1111111", "lastUpdated": last_updated}
        return {"triggerType": "collection_item_changed", "payload": {**item, "fieldData": {"name": name}}}

    first = event_id(changed("2023-03-27T22:26:40.926Z", "Ada"))
    second = event_id(changed("2023-03-28T09:12:03.114Z", "Ada Lovelace"))
    assert first != second
    assert first == event_id(changed("2023-03-27T22:26:40.926Z", "Ada"))  # a retry: the same body
