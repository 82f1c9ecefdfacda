"""Providers that check credentials rather than signatures (Pipedrive, basic-auth, token, Jotform,
none) and the generic `hmac` provider's options."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.errors import InvalidBody, Unauthorized, UnsupportedMediaType
from bridge.http.hooks import _Query
from bridge.providers import InboundRequest, Verified, build_provider
from bridge.providers.base import body_hash

PAYLOADS = Path(__file__).parent / "fixtures" / "payloads"
NOW_S = 1_715_690_000.0
JSON = {"content-type": "application/json"}


def request(
    body: bytes = b'{"a": 1}',
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> InboundRequest:
    return InboundRequest(
        method="POST",
        url="https://leads.example.com/hooks/x",
        path="/hooks/x",
        query=query or {},
        headers={k.lower(): v for k, v in (JSON if headers is None else headers).items()},
        body=body,
    )


def basic(username: str | bytes, password: str | bytes) -> dict[str, str]:
    user = username.encode() if isinstance(username, str) else username
    secret = password.encode() if isinstance(password, str) else password
    return JSON | {"Authorization": "Basic " + base64.b64encode(user + b":" + secret).decode()}


# --- basic auth (pipedrive, basic-auth) ----------------------------------------------------------


@pytest.mark.parametrize("name", ["pipedrive", "basic-auth"])
def test_basic_auth_accepts_the_right_credentials_only(name: str) -> None:
    provider = build_provider(name, {"username": "leadbridge", "password": ["new-pass", "old-pass"]})
    for password in ("new-pass", "old-pass"):
        provider.verify(request(headers=basic("leadbridge", password)), NOW_S)
    wrong: list[dict[str, str]] = [
        basic("leadbridge", "wrong"),
        basic("someone", "new-pass"),
        basic("leadbridge", ""),
        basic("", "new-pass"),
        basic("leadbridge", "new-pass "),
        JSON,
        JSON | {"Authorization": "Bearer new-pass"},
        JSON | {"Authorization": "Basic"},
        JSON | {"Authorization": "Basic !!!not-base64"},
        JSON | {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    ]
    for headers in wrong:
        with pytest.raises(Unauthorized):
            provider.verify(request(headers=headers), NOW_S)


def test_basic_auth_passwords_may_contain_colons_and_unicode() -> None:
    provider = build_provider("basic-auth", {"username": "ops", "password": "pä:ss:wörd"})
    provider.verify(request(headers=basic("ops", "pä:ss:wörd".encode())), NOW_S)
    header = JSON | {"authorization": "basic " + base64.b64encode("ops:pä:ss:wörd".encode()).decode()}
    provider.verify(request(headers=header), NOW_S)


@pytest.mark.parametrize("name", ["pipedrive", "basic-auth"])
def test_basic_auth_options_are_strict(name: str) -> None:
    for bad in (
        {"username": "u"},
        {"username": "", "password": "p"},
        {"username": "u", "password": ""},
        {"username": "u", "password": "p", "extra": 1},
    ):
        with pytest.raises(ValidationError):
            build_provider(name, bad)


def test_pipedrive_v2_event_id_is_meta_id() -> None:
    provider = build_provider("pipedrive", {"username": "u", "password": "p"})
    body = (PAYLOADS / "pipedrive-person-sync.json").read_bytes()
    verified = provider.verify(request(body, basic("u", "p")), NOW_S)
    payload = provider.parse(verified)
    assert payload == json.loads(body)
    assert provider.event_id(verified, payload) == "6ba407fc-006d-4556-9804-8298e584a288"


def test_pipedrive_v1_event_id_survives_retries_but_not_new_changes() -> None:
    provider = build_provider("pipedrive", {"username": "u", "password": "p"})
    meta = {
        "v": 1,
        "action": "updated",
        "object": "deal",
        "id": 49,
        "timestamp": 1715690000,
        "timestamp_micro": 1715690000384700,
        "webhook_id": "520458",
    }

    def event_id(payload: dict[str, Any]) -> str:
        verified = provider.verify(request(json.dumps(payload).encode(), basic("u", "p")), NOW_S)
        return str(provider.event_id(verified, provider.parse(verified)))

    first = event_id({"v": 1, "meta": meta, "retry": 0, "current": {"id": 49}, "event": "updated.deal"})
    retry = event_id({"v": 1, "meta": meta, "retry": 1, "current": {"id": 49}, "event": "updated.deal"})
    later = event_id({"v": 1, "meta": meta | {"timestamp_micro": 1715690999000000}, "retry": 0})
    assert first == retry == "v1:deal:49:updated:1715690000384700"
    assert later != first
    assert event_id({"no": "meta"}) == body_hash(json.dumps({"no": "meta"}).encode())


def test_pipedrive_sends_json_only() -> None:
    provider = build_provider("pipedrive", {"username": "u", "password": "p"})
    with pytest.raises(UnsupportedMediaType):
        provider.verify(
            request(b"a=1", basic("u", "p") | {"content-type": "application/x-www-form-urlencoded"}), NOW_S
        )


# --- token (token, jotform) ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["token", "jotform"])
def test_token_from_query_or_header(name: str) -> None:
    headers = JSON if name == "token" else {"content-type": "application/x-www-form-urlencoded"}
    body = b'{"a": 1}' if name == "token" else b"submissionID=1"
    provider = build_provider(name, {"token": ["new-token", "old-token"]})
    provider.verify(request(body, headers, {"token": "new-token"}), NOW_S)
    provider.verify(request(body, headers, {"token": "old-token"}), NOW_S)
    provider.verify(request(body, headers | {"X-Webhook-Token": "new-token"}), NOW_S)
    for query, extra in (
        ({}, {}),
        ({"token": "wrong"}, {}),
        ({"token": ""}, {}),
        ({"tok": "new-token"}, {}),
        ({}, {"X-Webhook-Token": "new-token-but-longer"}),
        ({}, {"Authorization": "new-token"}),
    ):
        with pytest.raises(Unauthorized):
            provider.verify(request(body, headers | extra, query), NOW_S)


@pytest.mark.parametrize("name", ["token", "jotform"])
def test_a_url_token_with_a_plus_as_pasted_into_the_vendors_settings(name: str) -> None:
    """`openssl rand -base64` tokens hold `+`. A vendor calls the URL as pasted, where `+` is a
    literal plus (RFC 3986), while the query is parsed as a form (`+` is a space): both read."""
    headers = JSON if name == "token" else {"content-type": "application/x-www-form-urlencoded"}
    body = b'{"a": 1}' if name == "token" else b"submissionID=1"
    token = "q7C+9x/Zr2Lw+Yk1bQ=="
    provider = build_provider(name, {"token": token})
    for raw in (b"token=q7C+9x/Zr2Lw+Yk1bQ==", b"token=q7C%2B9x%2FZr2Lw%2BYk1bQ%3D%3D"):
        provider.verify(request(body, headers, _Query(raw)), NOW_S)  # type: ignore[arg-type]
    for raw in (b"token=q7C+9x/Zr2Lw+Yk1bQ=", b"token=q7C-9x/Zr2Lw+Yk1bQ==", b"token=q7C9x/Zr2Lw+Yk1bQ=="):
        with pytest.raises(Unauthorized):
            provider.verify(request(body, headers, _Query(raw)), NOW_S)  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", ["\n", "\r\n"])
def test_a_secret_read_from_a_file_with_its_line_break_still_verifies(suffix: str) -> None:
    """`kubectl create secret --from-file` keeps the file's last newline; no vendor's secret has one."""
    provider = build_provider("token", {"token": ["new-token" + suffix, "\nold-token"]})
    provider.verify(request(query={"token": "new-token"}), NOW_S)
    provider.verify(request(query={"token": "old-token"}), NOW_S)
    password = build_provider("basic-auth", {"username": "u", "password": "p4ss" + suffix})
    password.verify(request(headers=basic("u", "p4ss")), NOW_S)
    with pytest.raises(Unauthorized):  # only line breaks go: the secret is otherwise as given
        password.verify(request(headers=basic("u", "p4s")), NOW_S)
    with pytest.raises(ValidationError):  # nothing but a line break is still an empty secret
        build_provider("token", {"token": suffix})


def test_token_header_name_is_configurable() -> None:
    provider = build_provider("token", {"token": "t0k", "header": "X-Unbounce-Secret"})
    provider.verify(request(headers=JSON | {"x-unbounce-secret": "t0k"}), NOW_S)
    with pytest.raises(Unauthorized):
        provider.verify(request(headers=JSON | {"x-webhook-token": "t0k"}), NOW_S)


def test_token_parses_json_forms_and_json_fields() -> None:
    provider = build_provider("token", {"token": "t", "json_fields": ["data.json"]})
    body = (PAYLOADS / "token-unbounce.form").read_bytes()
    headers = json.loads((PAYLOADS / "token-unbounce.headers.json").read_text())
    verified = provider.verify(request(body, headers, {"token": "t"}), NOW_S)
    payload = provider.parse(verified)
    assert payload["data.json"]["email"] == ["Tim@Example.org"]
    assert payload["page_name"] == "Demo request"
    assert provider.event_id(verified, payload) == body_hash(body)
    with pytest.raises(UnsupportedMediaType):
        provider.verify(request(body, {"content-type": "text/plain"}, {"token": "t"}), NOW_S)
    bad = provider.verify(request(b"data.json=%7Bnot+json", headers, {"token": "t"}), NOW_S)
    with pytest.raises(InvalidBody):
        provider.parse(bad)


def test_jotform_multipart_sample_parses_with_raw_request_decoded() -> None:
    provider = build_provider("jotform", {"token": "jt"})
    body = (PAYLOADS / "jotform-quote-request.txt").read_bytes()
    headers = json.loads((PAYLOADS / "jotform-quote-request.headers.json").read_text())
    verified = provider.verify(request(body, headers, {"token": "jt"}), NOW_S)
    payload = provider.parse(verified)
    assert payload["formID"] == "241334567890123"
    assert payload["rawRequest"]["q3_fullName"] == {"first": "Katherine", "last": "Johnson"}
    assert payload["rawRequest"]["slug"] == "submit/241334567890123/"
    assert provider.event_id(verified, payload) == "5912345678901234567"
    assert provider.reparse(body, headers) == payload  # as the worker sees it, from the kept headers


def test_jotform_refuses_json_and_bad_raw_request() -> None:
    provider = build_provider("jotform", {"token": "jt"})
    with pytest.raises(UnsupportedMediaType):
        provider.verify(request(b"{}", JSON, {"token": "jt"}), NOW_S)
    form = {"content-type": "application/x-www-form-urlencoded"}
    verified = provider.verify(request(b"submissionID=1&rawRequest=%7B", form, {"token": "jt"}), NOW_S)
    with pytest.raises(InvalidBody):
        provider.parse(verified)


# --- none ----------------------------------------------------------------------------------------


def test_none_requires_insecure_true_and_parses_any_supported_body() -> None:
    for bad in ({}, {"insecure": False}, {"insecure": "yes"}):
        with pytest.raises(ValidationError):
            build_provider("none", bad)
    provider = build_provider("none", {"insecure": True})
    assert provider.insecure
    verified = provider.verify(
        request(b"a=1&a=2", {"content-type": "application/x-www-form-urlencoded"}), NOW_S
    )
    assert provider.parse(verified) == {"a": ["1", "2"]}
    assert provider.event_id(verified, {}) == body_hash(b"a=1&a=2")
    with pytest.raises(UnsupportedMediaType):
        provider.parse(provider.verify(request(b"x", {"content-type": "text/plain"}), NOW_S))


# --- generic hmac options ------------------------------------------------------------------------


def hmac_request(body: bytes, value: str, extra: dict[str, str] | None = None) -> InboundRequest:
    return request(body, JSON | {"X-Signature": value} | (extra or {}))


@pytest.mark.parametrize(
    ("algorithm", "encoding", "prefix"),
    [("sha256", "hex", ""), ("sha1", "hex", "sha1="), ("sha512", "base64", "v1="), ("sha256", "base64", "")],
)
def test_hmac_algorithms_encodings_and_prefixes(algorithm: str, encoding: str, prefix: str) -> None:
    body = b'{"lead": "x"}'
    raw = hmac.new(b"s3cret", body, getattr(hashlib, algorithm)).digest()
    value = prefix + (raw.hex() if encoding == "hex" else base64.b64encode(raw).decode())
    options = {"secret": "s3cret", "algorithm": algorithm, "encoding": encoding, "prefix": prefix}
    provider = build_provider("hmac", options)
    provider.verify(hmac_request(body, value), NOW_S)
    with pytest.raises(Unauthorized):
        provider.verify(hmac_request(body + b" ", value), NOW_S)
    if prefix:
        with pytest.raises(Unauthorized):
            provider.verify(hmac_request(body, value[len(prefix) :]), NOW_S)


def test_hmac_header_may_carry_several_signatures() -> None:
    body = b"{}"
    good = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    provider = build_provider("hmac", {"secret": "k", "prefix": "sha256="})
    provider.verify(hmac_request(body, f"sha256={'0' * 64}, sha256={good}"), NOW_S)
    provider.verify(hmac_request(body, f"sha256={'0' * 64} sha256={good.upper()}"), NOW_S)
    with pytest.raises(Unauthorized):
        provider.verify(hmac_request(body, f"sha256={'0' * 64},sha256={'1' * 64}"), NOW_S)


def test_hmac_millisecond_timestamps_and_literal_braces() -> None:
    body = b"{}"
    timestamp = str(int(NOW_S * 1000))
    message = b"{v1}:" + timestamp.encode() + b":" + body
    signature = hmac.new(b"k", message, hashlib.sha256).hexdigest()
    options = {
        "secret": "k",
        "signed": "{{v1}}:{timestamp}:{body}",
        "timestamp_header": "X-Ts",
        "timestamp_unit": "ms",
        "tolerance_s": 60,
    }
    provider = build_provider("hmac", options)
    provider.verify(hmac_request(body, signature, {"X-Ts": timestamp}), NOW_S)
    with pytest.raises(Unauthorized):
        provider.verify(hmac_request(body, signature, {"X-Ts": timestamp}), NOW_S + 61)
    with pytest.raises(Unauthorized):
        provider.verify(hmac_request(body, signature, {"X-Ts": "12.5"}), NOW_S)


@pytest.mark.parametrize(
    "options",
    [
        {"signed": "{timestamp}.{body}"},  # {timestamp} without timestamp_header
        {"signed": "{timestamp}"},  # no {body}
        {"signed": "{body}{body}"},
        {"signed": "{id}.{body}"},
        {"signed": "{body!r}"},
        {"signed": "{body:>10}"},
        {"signed": "{body"},
        {"algorithm": "md5"},
        {"encoding": "base32"},
        {"timestamp_unit": "us", "timestamp_header": "X-Ts", "signed": "{timestamp}.{body}"},
        {"timestamp_header": "X-Ts"},  # a timestamp whose age is checked but that is not signed
        {"tolerance_s": 0},
        {"header": ""},
    ],
)
def test_hmac_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        build_provider("hmac", {"secret": "k"} | options)


@pytest.mark.parametrize("name", ["token", "basic-auth", "hmac", "none"])
def test_event_id_field_names_the_submission_instead_of_the_body_hash(name: str) -> None:
    """A form with no unique field sends byte-identical bodies for two real submissions: with the
    body's hash as their event id, the second would be answered "duplicate" and dropped."""
    options: dict[str, Any] = {
        "token": {"token": "t"},
        "basic-auth": {"username": "u", "password": "p"},
        "hmac": {"secret": "s", "header": "X-Signature"},
        "none": {"insecure": True},
    }[name]
    provider = build_provider(name, options | {"event_id_field": "meta.submission", "json_fields": ["data"]})
    body = b'{"meta": {"submission": "sub-81"}, "data": "{\\"email\\": \\"a@example.com\\"}"}'
    verified = Verified(request=request(body), provider=name)
    payload = provider.parse(verified)
    assert provider.event_id(verified, payload) == "sub-81"
    bare = Verified(request=request(b'{"meta": {}}'), provider=name)
    assert provider.event_id(bare, provider.parse(bare)) == body_hash(b'{"meta": {}}')  # no id: the hash
    plain = build_provider(name, options)
    assert plain.event_id(verified, plain.parse(verified)) == body_hash(body)
