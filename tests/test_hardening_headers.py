"""Request heads are bounded (bridge/http/protocol.py): header count and size, and a deadline for
the request line and headers, which uvicorn itself does not have."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bridge.app import create_app
from bridge.processes import Server, bind, server_config
from tests.pipeline import Pipeline, pipeline
from tests.servers import trickle, until


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


async def _exchange(host: str, port: int, head: bytes, timeout_s: float = 5) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    data = b""
    try:
        writer.write(head)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(timeout_s):
                while chunk := await reader.read(65536):
                    data += chunk
    finally:
        writer.close()
    return data


def _request(extra_headers: int = 0, header_bytes: int = 0) -> bytes:
    lines = [b"GET /healthz HTTP/1.1", b"Host: bridge", b"Connection: close"]
    lines += [b"X-H%d: v" % i for i in range(extra_headers)]
    if header_bytes:
        lines.append(b"X-Big: " + b"a" * header_bytes)
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_header_count_and_size_are_bounded(redis_url: str, tmp_path: Path) -> None:
    async with (
        pipeline(redis_url, tmp_path / "m", worker=False) as pipe,
        served(pipe, max_headers=100, max_header_bytes=65_536) as (host, port),
    ):
        # Host + Connection + 98 = 100 headers pass; one more is refused.
        assert (await _exchange(host, port, _request(extra_headers=98))).startswith(b"HTTP/1.1 200")
        assert (await _exchange(host, port, _request(extra_headers=99))).startswith(b"HTTP/1.1 400")
        assert (await _exchange(host, port, _request(header_bytes=60_000))).startswith(b"HTTP/1.1 200")
        assert (await _exchange(host, port, _request(header_bytes=70_000))).startswith(b"HTTP/1.1 400")
        assert (await _exchange(host, port, _request(header_bytes=2_000_000))).startswith(b"HTTP/1.1 400")


async def test_a_silent_or_trickling_client_is_cut_off_at_the_header_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    async with (
        pipeline(redis_url, tmp_path / "m", worker=False) as pipe,
        served(pipe, header_timeout_s=1.0) as (host, port),
    ):
        started = time.monotonic()
        assert await _exchange(host, port, b"") == b""  # sent nothing: closed
        assert 0.9 <= time.monotonic() - started < 4.5

        reader, writer = await asyncio.open_connection(host, port)
        head = _request(extra_headers=50)
        started = time.monotonic()

        sender = asyncio.create_task(trickle(writer, head))
        try:
            async with asyncio.timeout(5):
                answer = await reader.read()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            writer.close()
        assert answer == b""
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
