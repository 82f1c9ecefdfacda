"""Reading a request body (bridge/http/body.py): leadbridge's protocol marks a body it already
holds, and only such a body is read without the read timeout's timer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.types import Message, Receive, Scope, Send

from bridge.errors import RequestTimeout
from bridge.http.body import body_received, read_body
from bridge.http.server import Server, server_config
from bridge.processes import bind
from bridge.settings import Settings
from tests.servers import until

BODY = b'{"email": "body@example.com"}'
HEAD = b"POST /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(BODY)


class Probe:
    """An ASGI app answering "<marked at start> <body length>"; `started` is set when it runs."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        marked = body_received(scope)
        self.started.set()
        body = await read_body(receive, None, 1 << 20, None if marked else 5.0)
        answer = b"%d %d" % (marked, len(body))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(answer))],
            }
        )
        await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def served(app: Probe) -> AsyncIterator[int]:
    settings = Settings()
    sock = bind("127.0.0.1", 0)
    server = Server(server_config(app, "127.0.0.1", sock.getsockname()[1], settings))  # type: ignore[arg-type]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done())
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()


async def _answer(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):
        return (await reader.read()).split(b"\r\n\r\n", 1)[1]


async def test_a_body_sent_with_its_head_is_marked_and_one_sent_later_is_not() -> None:
    app = Probe()
    async with served(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD + BODY)
        assert await _answer(reader) == b"1 %d" % len(BODY)
        writer.close()

        app.started.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD)
        await asyncio.wait_for(app.started.wait(), 5)  # the app runs before the body is sent
        writer.write(BODY)
        assert await _answer(reader) == b"0 %d" % len(BODY)
        writer.close()


async def test_without_the_mark_a_body_that_does_not_come_times_out() -> None:
    async def receive() -> Message:
        await asyncio.Event().wait()  # never
        raise AssertionError

    with pytest.raises(RequestTimeout):
        await read_body(receive, "10", 100, 0.05)
    assert not body_received({"type": "http"})
