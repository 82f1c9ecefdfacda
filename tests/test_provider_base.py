"""The provider interface's helpers and the registry, as tables."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from pydantic import SecretStr

from bridge.errors import UnsupportedMediaType
from bridge.providers import PROVIDERS, InboundRequest, build_provider, provider_class
from bridge.providers.base import MAX_EVENT_ID_CHARS, any_equal, id_text, secrets_of, short_id

EXPECTED_PROVIDERS = {
    "standard-webhooks", "hmac", "none", "typeform", "tally", "close", "webflow", "calendly",
    "meta-lead-ads", "hubspot", "pipedrive", "basic-auth", "jotform", "token", "salesforce",
}  # fmt: skip


def test_every_contract_provider_is_registered_and_cites_its_source() -> None:
    assert set(PROVIDERS) == EXPECTED_PROVIDERS
    generic = {"hmac", "none", "basic-auth", "token"}
    for name, cls in PROVIDERS.items():
        assert cls.name == name
        docstring = sys.modules[cls.__module__].__doc__ or ""
        assert docstring.startswith(f"`{name}`"), f"{name}: module docstring names the provider"
        if name not in generic:
            assert "https://" in docstring, f"{name}: module docstring cites the vendor's documentation"


def test_unknown_provider_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="typeform"):
        provider_class("typefrom")
    with pytest.raises(KeyError):
        build_provider("nope", {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ev_123", "ev_123"),
        ("x" * MAX_EVENT_ID_CHARS, "x" * MAX_EVENT_ID_CHARS),
        ("x" * (MAX_EVENT_ID_CHARS + 1), None),
        ("", None),
        ("naïve", None),
        ("tab\there", None),
        ("new\nline", None),
    ],
)
def test_short_id_keeps_short_printable_ascii_and_hashes_the_rest(value: str, expected: str | None) -> None:
    result = short_id(value)
    if expected is not None:
        assert result == expected
    else:
        assert result.startswith("sha256:")
        assert len(result) == len("sha256:") + 64
        assert result == short_id(value)  # stable


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a", "a"),
        (12, "12"),
        (0, "0"),
        ("", None),
        (None, None),
        (True, None),
        (1.5, None),
        ([1], None),
        ({}, None),
    ],
)
def test_id_text(value: Any, expected: str | None) -> None:
    assert id_text(value) == expected


def test_secrets_and_constant_time_comparison() -> None:
    assert secrets_of(SecretStr("a")) == [b"a"]
    assert secrets_of([SecretStr("a"), SecretStr("b")]) == [b"a", b"b"]
    assert any_equal([b"x", b"b"], [b"a", b"b"])
    assert not any_equal([b"x"], [b"a", b"b"])
    assert not any_equal([], [b"a"])
    assert not any_equal([b"a"], [])


def test_content_type_is_the_bare_lower_case_media_type() -> None:
    def request(content_type: str | None) -> InboundRequest:
        headers = {} if content_type is None else {"content-type": content_type}
        return InboundRequest(method="POST", url="", path="", query={}, headers=headers, body=b"")

    assert request("Application/JSON; charset=UTF-8").content_type == "application/json"
    assert request(None).content_type == ""
    typeform = build_provider("typeform", {"secret": "s"})
    typeform.check_content_type(request("application/json; charset=utf-8"))
    with pytest.raises(UnsupportedMediaType):
        typeform.check_content_type(request("application/jsonp"))
