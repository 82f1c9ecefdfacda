"""Meta Lead Ads: the GET `hub.challenge` subscription handshake (signatures: test_provider_signatures)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.providers import InboundRequest, build_provider


def handshake(query: dict[str, str], method: str = "GET", tokens: Any = "my-verify-token") -> Any:
    provider = build_provider("meta-lead-ads", {"app_secret": "s", "verify_token": tokens})
    request = InboundRequest(
        method=method,
        url="https://leads.example.com/hooks/meta",
        path="/hooks/meta",
        query=query,
        headers={},
        body=b"",
    )
    return provider.handshake(request)


def test_subscribe_with_the_right_token_echoes_the_challenge() -> None:
    reply = handshake(
        {"hub.mode": "subscribe", "hub.verify_token": "my-verify-token", "hub.challenge": "1158201444"}
    )
    assert (reply.status, reply.body, reply.media_type) == (200, b"1158201444", "text/plain")


def test_rotated_verify_tokens_are_accepted() -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "old", "hub.challenge": "42"}
    assert handshake(query, tokens=["new", "old"]).status == 200


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": "my-verify-token", "hub.challenge": "1"},
        {"hub.verify_token": "my-verify-token", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": "my-verify-token"},
        {"hub.mode": "subscribe", "hub.verify_token": "my-verify-token", "hub.challenge": "x" * 257},
        {"hub.mode": "subscribe", "hub.verify_token": "my-verify-token", "hub.challenge": "<b>\n</b>"},
        {},
    ],
)
def test_anything_else_is_403(query: dict[str, str]) -> None:
    reply = handshake(query)
    assert reply.status == 403
    assert b"my-verify-token" not in reply.body


def test_only_get_is_a_handshake() -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "my-verify-token", "hub.challenge": "1"}
    assert handshake(query, method="PUT") is None
