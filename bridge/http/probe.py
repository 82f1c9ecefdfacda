"""The worker's probe server: `/healthz`, `/readyz` and `/metrics` on plain asyncio.

`leadbridge worker` answers nothing else over HTTP, and uvicorn + Starlette (with what they import:
click, anyio, multiprocessing, logging.config, ...) cost it 3-4 MiB of resident memory. This is
HTTP/1.1 cut down to what probes and Prometheus send:

- one request per connection: every answer has `Content-Length` and `Connection: close`, and the
  connection is closed after it (the kubelet opens a new connection for each probe anyway);
- `GET` and `HEAD` (the same headers, no body); another method is a 405 with `Allow`, an unknown
  path a 404; the query string is ignored; a request body is never parsed (what arrives after
  the head is read and dropped for a moment after the answer, so that closing does not reset
  the connection before the client has read it);
- the bounds of docs/security.md: the request line and headers must arrive within
  `header_timeout_s` (else the connection is closed without an answer) and fit in
  `max_head_bytes` and `max_headers` header lines (else 431); a request line or header that does
  not parse is a 400; over `max_connections` connections at once, a 503; an answer the client
  does not read is dropped after `header_timeout_s` too;
- each connection is its own task, so a slow client holds only its own; a handler that raises
  is a 500 and a log line without request data;
- `should_exit = True` (processes.py, on SIGINT/SIGTERM) stops accepting at once, as uvicorn
  does: connections waiting for a request are closed, answers in progress get `grace_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

import orjson

from bridge.http import checks

if TYPE_CHECKING:
    from bridge.runtime import Runtime
    from bridge.settings import Settings

log = logging.getLogger("bridge.http")

JSON = "application/json"
METHODS = (b"GET", b"HEAD")
ALLOW = "GET, HEAD"
LINGER_S = 1.0  # after an answer, how long what the client still sends is read and dropped
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
REQUEST_LINE = re.compile(_TOKEN + rb" (/[\x21-\x7e]*) HTTP/1\.[01]")
HEADER_LINE = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class Answer:
    """What a route answers: status, body, its type, and any further headers."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[], Awaitable[Answer]]


def error(status: int, *headers: tuple[str, str]) -> Answer:
    """The web app's error body (bridge/http/responses.py), for a status of this server's own."""
    reason = HTTPStatus(status).phrase.lower()
    return Answer(status, orjson.dumps({"status": "error", "error": reason}), JSON, headers)


def http_date(now: float) -> str:
    """RFC 9110's IMF-fixdate, without email.utils (not otherwise loaded by the worker)."""
    t = time.gmtime(now)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def encode(answer: Answer, *, with_body: bool) -> bytes:
    """The answer as sent: status line, headers (always Content-Length and Connection: close) and,
    unless it answers a HEAD, the body."""
    lines = [
        f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}",
        f"Date: {http_date(time.time())}",
        f"Content-Type: {answer.content_type}",
        f"Content-Length: {len(answer.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in answer.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + answer.body if with_body else head


def parse_head(head: bytes, max_headers: int) -> tuple[bytes, str] | int:
    """(method, path) of a request head (request line and headers, up to the blank line), or the
    error status: 400 for what does not parse, 431 for more than `max_headers` header lines."""
    lines = head.removesuffix(b"\r\n\r\n").split(b"\r\n")
    request = REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        return 400
    if len(lines) - 1 > max_headers:
        return 431
    if not all(HEADER_LINE.fullmatch(line) for line in lines[1:]):
        return 400
    method, _, _ = lines[0].partition(b" ")
    path, _, _ = request.group(1).partition(b"?")
    return method, path.decode("ascii")


class ProbeServer:
    """A small HTTP/1.1 server for a few fixed GET routes (see the module docstring). It runs
    like uvicorn.Server in bridge/processes.py: `await serve(sockets=[sock])` until
    `should_exit` is set."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        header_timeout_s: float,
        max_head_bytes: int,
        max_headers: int,
        max_connections: int,
        grace_s: float,
    ) -> None:
        self.routes = dict(routes)
        self.header_timeout_s = header_timeout_s
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.max_connections = max_connections
        self.grace_s = grace_s
        self.connections: set[asyncio.Task[None]] = set()
        self._answering: set[asyncio.Task[None]] = set()
        self._exit = asyncio.Event()

    @property
    def should_exit(self) -> bool:
        return self._exit.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value:
            self._exit.set()
        else:
            self._exit.clear()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Answer on these listening sockets until `should_exit`; then stop accepting, close
        the connections waiting for a request, and give answers in progress `grace_s`."""
        servers = [
            await asyncio.start_server(self._accept, sock=sock, limit=self.max_head_bytes)
            for sock in sockets or []
        ]
        try:
            await self._exit.wait()
        finally:
            for server in servers:
                server.close()
            await self._close_connections()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Each connection runs in a task of ours, not in the one asyncio.start_server would make
        # of a coroutine: those log an error when cancelled (Python 3.11), and ours are
        # cancelled at shutdown.
        over = len(self.connections) >= self.max_connections
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer, over=over))
        self.connections.add(task)
        task.add_done_callback(self.connections.discard)

    async def _close_connections(self) -> None:
        for task in self.connections - self._answering:
            task.cancel()
        if self._answering:
            await asyncio.wait(self._answering, timeout=self.grace_s)
        for task in self.connections:
            task.cancel()
        if self.connections:
            await asyncio.wait(self.connections)

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, over: bool
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if over:
                answer = encode(error(503), with_body=True)
            else:
                head = await self._read_head(reader)
                if head is None:
                    return
                self._answering.add(task)  # from here on, a shutdown lets it finish (grace_s)
                answer = await self._answer(head)
            async with asyncio.timeout(self.header_timeout_s):
                writer.write(answer)
                await writer.drain()
            self._answering.discard(task)
            writer.write_eof()
            await _linger(reader)
        except (TimeoutError, ConnectionError):
            pass  # the client was too slow, or went away
        finally:
            self._answering.discard(task)
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | int | None:
        """The request line and headers; 431 when they are too large; None when the client
        closed or was too slow."""
        try:
            async with asyncio.timeout(self.header_timeout_s):
                return await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return 431
        except (TimeoutError, asyncio.IncompleteReadError):
            return None

    async def _answer(self, head: bytes | int) -> bytes:
        parsed = parse_head(head, self.max_headers) if isinstance(head, bytes) else head
        if isinstance(parsed, int):
            return encode(error(parsed), with_body=True)
        method, path = parsed
        handler = self.routes.get(path)
        if handler is None:
            answer = error(404)
        elif method not in METHODS:
            answer = error(405, ("Allow", ALLOW))
        else:
            try:
                answer = await handler()
            except Exception:
                log.exception("probe server: %s failed", path)  # a route's own path, not the request's
                answer = error(500)
        return encode(answer, with_body=method != b"HEAD")


async def _linger(reader: asyncio.StreamReader) -> None:
    """Read and drop what the client still sends (a body, the rest of a head too large), until
    it closes or for LINGER_S: closing with unread data would reset the connection, and the
    client could lose the answer it has not read yet."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_S):
            while await reader.read(65536):
                pass


def probe_server(runtime: Runtime, settings: Settings) -> ProbeServer:
    """`leadbridge worker`'s probe server, with the web's bounds (docs/security.md)."""

    async def healthz() -> Answer:
        return Answer(200, orjson.dumps(checks.ALIVE))

    async def readyz() -> Answer:
        status, body = await checks.readiness(runtime)
        return Answer(status, orjson.dumps(body))

    async def metrics() -> Answer:
        return Answer(200, await checks.metrics_page(runtime), checks.METRICS_CONTENT_TYPE)

    return ProbeServer(
        {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics},
        header_timeout_s=settings.header_timeout_s,
        max_head_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        max_connections=settings.max_concurrent_requests,
        grace_s=settings.shutdown_grace_s,
    )
