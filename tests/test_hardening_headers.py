"""Request heads are bounded (bridge/http/protocol.py): header count and size, and a deadline for
the request line and headers, which uvicorn itself does not have."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bridge.app import create_app
from bridge.http.server import Server, server_config
from bridge.processes import bind
from tests.pipeline import Pipeline, pipeline
from tests.servers import exchange, healthz_head, trickled, until


@asynccontextmanager
async def served(pipe: Pipeline, **limits: object) -> AsyncIterator[tuple[str, int]]:
    settings = pipe.runtime.settings.model_copy(update=limits)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = Server(server_config(create_app(settings, runtime=pipe.runtime), "127.0.0.1", port, settings))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done())
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()


async def test_header_count_and_size_are_bounded(redis_url: str, tmp_path: Path) -> None:
    async with (
        pipeline(redis_url, tmp_path / "m", worker=False) as pipe,
        served(pipe, max_headers=100, max_header_bytes=65_536) as (host, port),
    ):
        # Host + Connection + 98 = 100 headers pass; one more is refused.
        assert (await exchange(host, port, healthz_head(extra_headers=98))).startswith(b"HTTP/1.1 200")
        assert (await exchange(host, port, healthz_head(extra_headers=99))).startswith(b"HTTP/1.1 400")
        assert (await exchange(host, port, healthz_head(header_bytes=60_000))).startswith(b"HTTP/1.1 200")
        assert (await exchange(host, port, healthz_head(header_bytes=70_000))).startswith(b"HTTP/1.1 400")
        assert (await exchange(host, port, healthz_head(header_bytes=2_000_000))).startswith(b"HTTP/1.1 400")


async def test_a_silent_or_trickling_client_is_cut_off_at_the_header_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    async with (
        pipeline(redis_url, tmp_path / "m", worker=False) as pipe,
        served(pipe, header_timeout_s=1.0) as (host, port),
    ):
        started = time.monotonic()
        assert await exchange(host, port, b"") == b""  # sent nothing: closed
        assert 0.9 <= time.monotonic() - started < 4.5

        started = time.monotonic()
        assert await trickled(host, port, healthz_head(extra_headers=50)) == b""
        assert 0.9 <= time.monotonic() - started < 4.5

        # A prompt client on a kept-alive connection is not affected by the deadline.
        reader, writer = await asyncio.open_connection(host, port)
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            while (await reader.readline()) != b"\r\n":
                pass
            await reader.readexactly(len(b'{"status":"ok"}'))
            await asyncio.sleep(0.6)  # idle between requests, within the keep-alive timeout
        writer.close()
