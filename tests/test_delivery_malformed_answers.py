"""A malformed HTTP answer (bad status line or header, e.g. from a proxy in front of the
upstream) is a transport failure like a reset connection: retried, counted by the breaker, never
an immediate "internal error" dead letter. With the default aiohttp pool, aiohttp raises
`ClientResponseError` for it, which httpx-aiohttp does not map to an httpx error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from bridge.connect.client import ConnectClient, EnrichClient, build_http_client
from bridge.errors import UpstreamError
from bridge.queue import deliveries
from tests.pipeline import pipeline
from tests.servers import until
from tests.test_enrich import meta_pipeline_at, post_meta

REPO = Path(__file__).resolve().parent.parent
PAYLOADS = REPO / "tests" / "fixtures" / "payloads"
GARBLED = b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n{}"


@asynccontextmanager
async def garbling_proxy(target: str, garble_first: int) -> AsyncIterator[tuple[str, list[str]]]:
    """A raw HTTP/1.1 server: the first `garble_first` requests get a malformed answer, the
    rest are forwarded to `target` (one request per connection)."""
    seen: list[str] = []
    http = httpx.AsyncClient(timeout=10)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
            body = await reader.readexactly(length) if length else b""
            seen.append(f"{method} {path}")
            if len(seen) <= garble_first:
                writer.write(GARBLED)
            else:
                keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
                answer = await http.request(method, target + path, content=body, headers=keep)
                out = f"HTTP/1.1 {answer.status_code} X\r\n".encode()
                out += f"content-type: {answer.headers.get('content-type', 'application/json')}\r\n".encode()
                out += f"content-length: {len(answer.content)}\r\nconnection: close\r\n\r\n".encode()
                writer.write(out + answer.content)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        await http.aclose()


async def test_a_malformed_answer_is_a_retryable_upstream_error() -> None:
    async with garbling_proxy("http://127.0.0.1:9", garble_first=10) as (url, _):
        http = build_http_client(timeout_s=2, max_connections=4)
        try:
            with pytest.raises(UpstreamError) as created:
                await ConnectClient(http, url, "k").create_entry({"tableId": "t"}, "key-1")
            assert created.value.retryable
            assert created.value.status is None
            with pytest.raises(UpstreamError) as fetched:
                await EnrichClient(lambda: http)(f"{url}/lead/1?access_token=SECRET", {})
            assert fetched.value.retryable
            assert "SECRET" not in fetched.value.message
        finally:
            await http.aclose()


async def test_a_create_answered_garbled_once_is_retried_not_dead_lettered(
    redis_url: str, tmp_path: Path
) -> None:
    async with (
        pipeline(redis_url, tmp_path / "mappings") as pipe,
        garbling_proxy(pipe.sandbox_url, garble_first=1) as (proxy_url, seen),
    ):
        # The worker's upstream is the proxy in front of the sandbox (table reads go through
        # it too: the first request, the table GET, is the one garbled).
        pipe.runtime.deliverer.connect._inner._base = proxy_url  # type: ignore[attr-defined]
        response = await pipe.send_signed({"data": {"email": "g@example.com", "first_name": "G"}})
        delivery_id = response.json()["delivery_id"]
        status = await pipe.wait_status(delivery_id, "delivered", "dead", timeout_s=15)
        record = await deliveries.load(pipe.redis, delivery_id)
        assert record is not None
        assert status == "delivered", record.reason
        assert len(await pipe.entries()) == 1
        assert seen[0].startswith("GET /connect/tables/"), seen
        assert len(seen) >= 2, seen


async def test_an_enrich_source_answering_garbled_once_is_retried(redis_url: str, tmp_path: Path) -> None:
    async def graph(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        calls.append(1)
        if len(calls) == 1:
            writer.write(GARBLED)
        else:
            body = (PAYLOADS / "meta-lead-ads-form.enrich.json").read_bytes()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
        await writer.drain()
        writer.close()

    calls: list[int] = []
    server = await asyncio.start_server(graph, "127.0.0.1", 0)
    graph_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with meta_pipeline_at(redis_url, tmp_path, graph_url) as pipe:
            delivery_id = await post_meta(pipe, (PAYLOADS / "meta-lead-ads-form.json").read_bytes())
            status = await pipe.wait_status(delivery_id, "delivered", "dead", timeout_s=15)
            record = await deliveries.load(pipe.redis, delivery_id)
            assert record is not None
            assert status == "delivered", record.reason
            await until(lambda: len(calls) >= 2)
    finally:
        server.close()
