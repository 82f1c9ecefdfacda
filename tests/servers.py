"""Test helpers: serve an ASGI app with uvicorn on a loopback port, poll with a deadline, and talk
raw HTTP/1.1 to a server (prompt, trickling or silent clients)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import uvicorn

from bridge.http.server import Server, server_config
from bridge.settings import Settings

T = TypeVar("T")


@asynccontextmanager
async def serve(app: Any, host: str = "127.0.0.1", settings: Settings | None = None) -> AsyncIterator[str]:
    """Run `app` on a free loopback port in this event loop; yields its base URL. With
    `settings`, as leadbridge serves (`server_config`: its HTTP protocol and bounds)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    if settings is not None:
        config = server_config(app, host, port, settings)
    else:
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=2
        )
    server = Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done(), timeout_s=10)
        if task.done():
            task.result()
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()


async def until(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout_s: float = 10.0, interval_s: float = 0.01
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)


async def trickle(writer: asyncio.StreamWriter, data: bytes, interval_s: float = 0.1) -> None:
    """A slow client: send `data` one byte every `interval_s` (pacing, not synchronisation),
    until it is all sent or the server closes the connection."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(interval_s)


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    data = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                data += chunk
    return data


async def exchange(host: str, port: int, request: bytes, timeout_s: float = 5.0) -> bytes:
    """Send `request` on a new connection; what comes back until the server closes it."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await read_until_closed(reader, timeout_s)
    finally:
        writer.close()


async def trickled(host: str, port: int, data: bytes, *, first: bytes = b"", timeout_s: float = 5.0) -> bytes:
    """A slow client: send `first` at once, then `data` a byte at a time (`trickle`); what comes
    back until the server closes the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(first)
    sender = asyncio.create_task(trickle(writer, data))
    try:
        return await read_until_closed(reader, timeout_s)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()


def healthz_head(extra_headers: int = 0, header_bytes: int = 0) -> bytes:
    """A `GET /healthz` request head with `extra_headers` more headers and one of `header_bytes`."""
    lines = [b"GET /healthz HTTP/1.1", b"Host: bridge", b"Connection: close"]
    lines += [b"X-H%d: v" % i for i in range(extra_headers)]
    if header_bytes:
        lines.append(b"X-Big: " + b"a" * header_bytes)
    return b"\r\n".join(lines) + b"\r\n\r\n"
