"""The Connect client against settings and answers it must survive (real loopback HTTP)."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.connect.classify import classify, parse_retry_after
from bridge.connect.client import ConnectClient, build_http_client
from bridge.errors import UpstreamError
from bridge.sandbox import DEMO_API_KEY, DEMO_TABLE_ID, create_sandbox_app
from bridge.settings import load_settings
from tests.servers import serve


@pytest.mark.parametrize("pool", ["aiohttp", "httpx"])
@pytest.mark.parametrize(
    "suffix", ["\n", " ", "/\n", "/ \r\n"], ids=["lf", "space", "slash-lf", "slash-crlf"]
)
async def test_upstream_settings_with_surrounding_whitespace_still_reach_the_upstream(
    pool: str, suffix: str
) -> None:
    """A trailing newline is what a Kubernetes Secret or ConfigMap made from a file (or `echo`)
    usually carries: it must not turn every delivery into an internal-error dead letter."""
    async with serve(create_sandbox_app()) as url:
        key_suffix = suffix.lstrip("/")
        settings = load_settings(CONNECT_BASE_URL=url + suffix, CONNECT_API_KEY=DEMO_API_KEY + key_suffix)
        base_url, key = settings.require_upstream()
        http = build_http_client(timeout_s=5, max_connections=2, pool=pool)
        try:
            table = await ConnectClient(http, base_url, key.get_secret_value()).get_table(DEMO_TABLE_ID)
        finally:
            await http.aclose()
        assert table["id"] == DEMO_TABLE_ID


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u00b3", "\u2155"])
def test_a_retry_after_of_non_ascii_digits_is_ignored(value: str) -> None:
    assert parse_retry_after(value) is None
    outcome = classify(503, retry_after=value)
    assert outcome.retryable
    assert outcome.retry_after_s is None


async def test_a_garbled_retry_after_is_a_retryable_upstream_error_not_a_crash() -> None:
    async def busy(request: Request) -> Response:
        # Starlette writes header values as latin-1: the byte 0xB2, which httpx reads back as "²".
        return Response(b'{"error":"busy"}', 503, {"Retry-After": "\u00b2"}, media_type="application/json")

    app = Starlette(routes=[Route("/connect/table_entries", busy, methods=["POST"])])
    async with serve(app) as url:
        http = build_http_client(timeout_s=5, max_connections=2)
        try:
            with pytest.raises(UpstreamError) as raised:
                await ConnectClient(http, url, "k").create_entry({"tableId": "t"}, "key-1")
        finally:
            await http.aclose()
    assert raised.value.retryable
    assert raised.value.status == 503


def test_the_admin_token_and_encryption_keys_lose_a_file_s_trailing_newline() -> None:
    settings = load_settings(BRIDGE_ADMIN_TOKEN="admin-tok\n", BRIDGE_ENCRYPTION_KEYS=" k1,k2\r\n")
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "admin-tok"
    assert settings.encryption_keys is not None
    assert settings.encryption_keys.get_secret_value() == "k1,k2"
