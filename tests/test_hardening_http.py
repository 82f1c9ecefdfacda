"""Hostile HTTP clients: a trickled body is cut off, the concurrency bound answers 503, idle
keep-alive connections are closed, deep JSON is refused, and the admin routes need the token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson

from bridge.app import create_app
from bridge.http.server import Server, server_config
from bridge.processes import bind
from bridge.settings import Settings
from tests.pipeline import Pipeline, pipeline, sign
from tests.servers import exchange, read_until_closed, trickled, until

ADMIN_TOKEN = "hardening-admin-token-c41a"
ADMIN_ROUTES = [
    ("GET", "/admin/dlq"),
    ("GET", "/admin/dlq/abc"),
    ("DELETE", "/admin/dlq/abc"),
    ("POST", "/admin/dlq/abc/replay"),
    ("GET", "/admin/deliveries/abc"),
]


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


# -- slow clients ------------------------------------------------------------------------------------


async def test_a_trickled_body_is_cut_off_within_the_read_timeout(redis_url: str, tmp_path: Path) -> None:
    async with pipeline(redis_url, tmp_path / "mappings", worker=False, BRIDGE_READ_TIMEOUT_S=1) as pipe:
        body = orjson.dumps({"type": "contact.submitted", "data": {"email": "slow@example.com"}}) * 2
        head = (
            b"POST /hooks/contact HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        started = time.monotonic()
        # the whole body would take ~10 s
        answer = await trickled(*_host_port(pipe.url), body, first=head, timeout_s=5)
        elapsed = time.monotonic() - started
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"connection: close" in answer.lower() or answer == b""
        assert 0.9 <= elapsed < 4.5, elapsed  # cut off at ~1 s (slack for a loaded machine), then closed
        assert await pipe.redis.zcard("arq:queue") == 0


@asynccontextmanager
async def served(settings: Settings, pipe: Pipeline) -> AsyncIterator[tuple[str, int, Server]]:
    """The web app under the same uvicorn settings as `leadbridge serve`, on a loopback port."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = Server(server_config(create_app(settings, runtime=pipe.runtime), "127.0.0.1", port, settings))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done())
        yield "127.0.0.1", port, server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()


async def _get(host: str, port: int, path: str = "/healthz") -> bytes:
    return await exchange(
        host, port, f"GET {path} HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n\r\n".encode()
    )


def test_the_uvicorn_settings_come_from_the_environment() -> None:
    defaults = server_config(create_app(Settings()), "127.0.0.1", 0, Settings())
    assert (defaults.limit_concurrency, defaults.timeout_keep_alive) == (1000, 5)
    custom = Settings(BRIDGE_MAX_CONCURRENT_REQUESTS=7, BRIDGE_KEEP_ALIVE_TIMEOUT_S=2)
    config = server_config(create_app(custom), "127.0.0.1", 0, custom)
    assert (config.limit_concurrency, config.timeout_keep_alive) == (7, 2)


async def test_requests_over_the_concurrency_bound_are_answered_503(redis_url: str, tmp_path: Path) -> None:
    async with pipeline(redis_url, tmp_path / "mappings", worker=False) as pipe:
        settings = pipe.runtime.settings.model_copy(update={"max_concurrent_requests": 3})
        async with served(settings, pipe) as (host, port, server):
            assert (await _get(host, port)).startswith(b"HTTP/1.1 200")
            # Three clients hold connections open (slow or idle): the bound is reached.
            held = [await asyncio.open_connection(host, port) for _ in range(3)]
            await until(lambda: len(server.server_state.connections) >= 3)
            refused = await _get(host, port, "/readyz")
            assert refused.startswith(b"HTTP/1.1 503"), refused[:80]
            # the liveness probe alone is answered (tests/test_hardening_liveness.py)
            assert (await _get(host, port)).startswith(b"HTTP/1.1 200")
            for _, writer in held:
                writer.close()
            await until(lambda: len(server.server_state.connections) == 0)
            assert (await _get(host, port)).startswith(b"HTTP/1.1 200")


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    async with pipeline(redis_url, tmp_path / "mappings", worker=False) as pipe:
        settings = pipe.runtime.settings.model_copy(update={"keep_alive_timeout_s": 1})
        async with served(settings, pipe) as (host, port, _):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            await read_until_closed(reader, timeout_s=5)  # the rest of the answer, then EOF
            elapsed = time.monotonic() - started
            writer.close()
            assert 0.5 <= elapsed < 4.5, elapsed


# -- deep JSON ---------------------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    """A contact event whose `extra` field nests `depth` lists (the whole body: depth + 2 levels)."""
    inner = b"[" * depth + b"1" + b"]" * depth
    return b'{"type":"contact.submitted","data":{"email":"deep@example.com"},"extra":' + inner + b"}"


async def test_json_nested_50_levels_is_accepted_and_10000_levels_refused(pipe: Pipeline) -> None:
    shallow = _nested(50)
    accepted = await pipe.post("contact", shallow, sign(shallow))
    assert accepted.status_code == 202, accepted.text
    deep = _nested(10_000)
    refused = await pipe.post("contact", deep, sign(deep))
    assert refused.status_code == 400
    assert refused.json() == {"status": "error", "error": refused.json()["error"]}
    assert len(refused.content) < 200
    just_over = _nested(64)  # 66 levels in all: over the 64-level bound
    assert (await pipe.post("contact", just_over, sign(just_over))).status_code == 400


# -- the admin token -----------------------------------------------------------------------------------


async def test_admin_routes_answer_404_when_no_token_is_configured(redis_url: str, tmp_path: Path) -> None:
    async with pipeline(redis_url, tmp_path / "mappings", worker=False) as pipe:
        assert pipe.runtime.settings.admin_token is None
        for method, path in ADMIN_ROUTES:
            for headers in ({}, {"authorization": "Bearer anything"}):
                response = await pipe.http.request(method, pipe.url + path, headers=headers)
                assert response.status_code == 404, (method, path)


WRONG_AUTHORIZATIONS = [
    None,
    "",
    "Bearer",
    "Bearer wrong-token",
    f"Bearer {ADMIN_TOKEN}x",
    f"Bearer {ADMIN_TOKEN[:-1]}",
    f"Basic {ADMIN_TOKEN}",
    ADMIN_TOKEN,
    f"Bearer  {ADMIN_TOKEN}",
    f"Bearer {ADMIN_TOKEN.upper()}",
]


async def test_admin_routes_refuse_a_missing_or_wrong_token_with_401(redis_url: str, tmp_path: Path) -> None:
    async with pipeline(redis_url, tmp_path / "m", worker=False, BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN) as pipe:
        for authorization in WRONG_AUTHORIZATIONS:
            headers = {} if authorization is None else {"authorization": authorization}
            for method, path in ADMIN_ROUTES:
                response = await pipe.http.request(method, pipe.url + path, headers=headers)
                assert response.status_code == 401, (method, path, authorization)
                assert ADMIN_TOKEN not in response.text
                assert response.json() == {"status": "error", "error": "unauthorized"}


async def test_admin_routes_answer_with_the_right_token(redis_url: str, tmp_path: Path) -> None:
    async with pipeline(
        redis_url, tmp_path / "mappings", worker=False, BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN
    ) as pipe:
        right = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        listing = await pipe.http.get(f"{pipe.url}/admin/dlq", headers=right)
        assert listing.status_code == 200
        assert listing.json() == {"count": 0, "total": 0, "items": []}
        delivery_id = (await pipe.send_signed({"type": "t", "data": {"email": "a@example.com"}})).json()[
            "delivery_id"
        ]
        shown = await pipe.http.get(f"{pipe.url}/admin/deliveries/{delivery_id}", headers=right)
        assert shown.status_code == 200
        assert shown.json()["id"] == delivery_id
        assert "body" not in shown.json()
        # Not dead-lettered: the DLQ routes do not know it.
        assert (await pipe.http.get(f"{pipe.url}/admin/dlq/{delivery_id}", headers=right)).status_code == 404
