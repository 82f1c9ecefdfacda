"""The head deadline of a pipelined request whose head starts while the previous request
is still being answered."""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.types import Receive, Scope, Send

from bridge.settings import Settings
from tests.servers import serve


async def _slow_then_answer(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)  # longer than the head deadline (a slow store, say)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_pipelined_head_trickled_during_a_slow_answer_is_still_cut_off() -> None:
    settings = Settings(BRIDGE_HEADER_TIMEOUT_S=1, BRIDGE_KEEP_ALIVE_TIMEOUT_S=1)
    async with serve(_slow_then_answer, settings=settings) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\n")
        await writer.drain()

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for i in range(1000):
                    writer.write(b"X-%d: v\r\n" % i)  # header lines, never the blank line
                    await writer.drain()
                    await asyncio.sleep(0.2)

        dripper = asyncio.create_task(drip())
        started = time.monotonic()
        received = b""
        try:
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(8):
                    while chunk := await reader.read(65536):
                        received += chunk
        finally:
            dripper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dripper
            writer.close()
        held = time.monotonic() - started
        assert received.startswith(b"HTTP/1.1 200"), received
        # the head of /next began at once: 1 s deadline, /slow answered at 1.5 s
        assert held < 4, held
