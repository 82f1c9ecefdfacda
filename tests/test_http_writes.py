"""leadbridge's HTTP protocol (bridge/http/protocol.py) sends a response's head and its first body
part in one write; a `100 Continue` and later body parts are written as they come, and a
response that fails after its head still sends the head before the connection is closed.

The protocol runs here on a recording transport, so what counts is the exact writes."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from bridge.http.protocol import bounded_protocol
from tests.servers import until

App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.closed_by_server = False
        self.cycle: Any = None  # uvicorn's RequestResponseCycle of the (last) request

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _exchange(app: App, request: bytes, *, done: Callable[[Recording], bool]) -> Recording:
    config = uvicorn.Config(app, log_config=None, lifespan="off", access_log=False)
    config.load()
    protocol = bounded_protocol(10.0, 100, 64 * 1024)(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Recording()
    protocol.connection_made(transport)
    protocol.data_received(request)
    await until(lambda: done(transport), timeout_s=5)
    await asyncio.sleep(0)  # the cycle's task ends (a write after `done` would show)
    transport.closed_by_server = transport.closed
    transport.cycle = protocol.cycle
    protocol.connection_lost(None)  # stops the keep-alive timer (and closes the transport)
    return transport


def _post(body: bytes, *extra: bytes) -> bytes:
    head = [b"POST /x HTTP/1.1", b"Host: t", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _split(written: bytes, status: int) -> tuple[bytes, bytes]:
    """A response's head (checked to have `status`) and what follows it."""
    head, blank, body = written.partition(b"\r\n\r\n")
    assert blank
    assert head.startswith(b"HTTP/1.1 %d " % status)
    return head, body


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = (await receive())["body"]
    length = (b"content-length", b"%d" % len(body))
    await send({"type": "http.response.start", "status": 202, "headers": [length]})
    await send({"type": "http.response.body", "body": body})


async def test_a_response_goes_out_in_one_write_head_and_body() -> None:
    transport = await _exchange(_echo, _post(b'{"ok": 1}'), done=lambda t: bool(t.writes))
    assert len(transport.writes) == 1
    head, body = _split(transport.writes[0], 202)
    assert b"content-length: 9" in head
    assert body == b'{"ok": 1}'
    assert not transport.closed_by_server
    # once the head is out, the cycle's transport lets go of the cycle: no reference cycle keeps
    # a request's cycle (scope, body) alive until the garbage collector runs
    assert transport.cycle not in gc.get_referents(transport.cycle.transport)


async def test_an_empty_response_goes_out_in_one_write() -> None:
    async def no_content(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = await _exchange(no_content, _post(b"{}"), done=lambda t: bool(t.writes))
    assert len(transport.writes) == 1
    assert _split(transport.writes[0], 204)[1] == b""


async def test_later_body_parts_are_written_as_they_come() -> None:
    async def streamed(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one", b"two"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    transport = await _exchange(streamed, _post(b""), done=lambda t: len(t.writes) == 3)
    first, second, last = transport.writes
    head, body = _split(first, 200)
    assert head.endswith(b"transfer-encoding: chunked")
    assert body == b"3\r\none\r\n"
    assert (second, last) == (b"3\r\ntwo\r\n", b"0\r\n\r\n")


async def test_100_continue_is_written_at_once_and_not_joined_to_the_head() -> None:
    transport = await _exchange(
        _echo, _post(b"{}", b"Expect: 100-continue"), done=lambda t: len(t.writes) == 2
    )
    assert transport.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert _split(transport.writes[1], 202)[1] == b"{}"


async def test_a_response_failing_after_its_head_sends_the_head_then_closes() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        raise RuntimeError("after the head")

    transport = await _exchange(failing, _post(b""), done=lambda t: t.closed)
    assert transport.closed_by_server
    assert len(transport.writes) == 1
    assert _split(transport.writes[0], 200)[1] == b""


async def test_a_head_request_gets_its_head_in_one_write() -> None:
    async def head(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"7")]})
        await send({"type": "http.response.body", "body": b"ignored"})

    transport = await _exchange(head, b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n", done=lambda t: bool(t.writes))
    assert len(transport.writes) == 1
    assert _split(transport.writes[0], 200)[1] == b""
