"""BRIDGE_MAX_HEADER_BYTES must hold for one header line that never ends, too (httptools
accumulates a header's value in memory and reports it only once the line is complete)."""

from __future__ import annotations

import asyncio

from bridge.settings import Settings
from tests.servers import serve


async def _ok(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_header_line_growing_past_the_head_bound_is_refused_before_it_ends() -> None:
    async with serve(_ok, settings=Settings(BRIDGE_HEADER_TIMEOUT_S=20)) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: ")
        sent, reset = 0, False
        try:
            for _ in range(64):  # 16 MiB of one header value, 250 times the 64 KiB bound
                writer.write(b"a" * (256 * 1024))
                await writer.drain()
                sent += 256 * 1024
        except ConnectionError:
            reset = True  # the server closed the connection (with our bytes unread: a reset)
        answer = b""
        try:
            async with asyncio.timeout(3):
                answer = await reader.read(65536)
        except ConnectionError:
            reset = True
        except TimeoutError:
            pass
        writer.close()
        # refused (a 400, or the connection closed) once the bound is passed, not held while the
        # line grows: the server read 16 MiB of one header without a word
        assert reset or answer.startswith(b"HTTP/1.1 400") or reader.at_eof(), (sent, answer[:60])


async def test_a_trailer_line_that_never_ends_is_cut_off_too() -> None:
    settings = Settings(BRIDGE_READ_TIMEOUT_S=20)

    async def reads(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await _ok(scope, receive, send)

    async with serve(reads, settings=settings) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        writer.write(head + b"2\r\n{}\r\n0\r\nX-T: ")  # a trailer line that never ends
        reset = False
        try:
            for _ in range(64):
                writer.write(b"a" * (256 * 1024))
                await writer.drain()
        except ConnectionError:
            reset = True
        try:
            async with asyncio.timeout(3):
                await reader.read(65536)
        except ConnectionError:
            reset = True
        except TimeoutError:
            pass
        writer.close()
        assert reset or reader.at_eof()
