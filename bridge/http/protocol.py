"""uvicorn's httptools protocol with the request-head bounds uvicorn does not have.

uvicorn bounds headers only with its pure-Python h11 parser (`h11_max_incomplete_event_size`);
with httptools, which it prefers when installed, a request line and headers of any size and
number are accepted. And no uvicorn parser has a deadline for the request head: a client that
connects and sends nothing, or trickles its headers, holds a connection (and a slot of
`limit_concurrency`) for as long as it likes. This subclass adds, per request:

- a deadline (`header_timeout_s`) from the connection's first byte of the request (or from the
  connection being made) to the end of its headers: past it, the connection is closed;
- at most `max_headers` headers and `max_head_bytes` of request line + headers: past either,
  a 400 and the connection closed (uvicorn's own answer to a request it cannot parse).

It also marks a request whose body it holds whole before the app reads it (nearly every
webhook: see `bridge.http.body`), so that reading it needs no timer.

And it sends a response's head and its first body part in one write. uvicorn writes the head at
`http.response.start` and the body at `http.response.body`: two system calls, and (sockets are
TCP_NODELAY) two TCP segments for the client to read, for every response. A request's cycle
writes through `HeadJoiningTransport`, which holds the head until the body's first write. A
webhook's answer then costs one write; in the ingest benchmark that was a fifth of `serve`'s
CPU per request (`bench/run.py --only ingest`, docs/performance.md).

`bounded_protocol(...)` makes the class for uvicorn's `Config(http=...)`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from bridge.http.body import mark_body_received


class HeadJoiningTransport(asyncio.Transport):
    """What one request's cycle writes to: the response head, written by `http.response.start`,
    is held and sent with the next write (the body's first part, possibly empty: uvicorn writes
    one for every response but a HEAD request's) in one. Other writes (a `100 Continue` before
    the response starts, later body parts, a HEAD response's head) go straight through."""

    __slots__ = ("_cycle", "_head", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        super().__init__()
        self._transport = transport
        self._cycle: RequestResponseCycle | None = cycle  # until its head is written
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head + data)
        elif self._cycle is not None and self._cycle.response_started:
            # The cycle sets response_started just before it writes the head. The head of a
            # HEAD request's response is all there is (uvicorn writes no body for it). The
            # cycle is let go of here: it refers to this transport, and a reference cycle would
            # keep every request's cycle alive until the garbage collector runs.
            cycle, self._cycle = self._cycle, None
            head = bytes(data)
            if cycle.more_body and cycle.keep_alive:
                # The response starts before the request's body has arrived whole (a refusal
                # that does not read it: 404, 413). Kept alive, the connection would go on
                # reading and discarding the rest with no deadline at all (a client dripping it
                # holds the connection, and a slot of limit_concurrency, forever), and a client
                # that waits for `100 Continue` never sends it, so its next request would be
                # read as this one's body. As uvicorn's h11 protocol does: close, and say so.
                cycle.keep_alive = False
                head = head[:-2] + b"connection: close\r\n\r\n"
            if cycle.scope["method"] == "HEAD":
                self._transport.write(head)
            else:
                self._head = head
        else:
            self._transport.write(data)

    def close(self) -> None:
        # A response that started and then failed: what uvicorn would have sent, then the close.
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


LIVENESS_PATH = b"/healthz"  # the request target of the kubelet's liveness probe (k8s/base/web.yaml)


class HeadTooLarge(Exception):
    """Raised inside a parser callback; httptools turns it into a parse error (uvicorn: 400)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    max_headers: int = 100
    max_head_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        # A pipelined request's head outlived its deadline while an earlier request was being
        # answered: the connection is closed once that answer (and any queued one) is out.
        self._head_overdue = False
        self._progress = False  # a parser callback ran during this data_received
        self._silent = 0  # bytes fed since the parser last reported anything
        self._in_trailers = False  # the current request's headers are complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # httptools reports a header (or trailer) only once its line is complete, accumulating
        # its value meanwhile (by bytes concatenation: quadratic). One line that never ends
        # would grow in memory, and block the loop, until a deadline that cannot fire while the
        # loop is blocked. So bytes fed without any callback (inside one line) are bounded by
        # max_head_bytes too (within one read's size).
        self._progress = False
        super().data_received(data)
        if self._progress:
            self._silent = 0
            return
        self._silent += len(data)
        if self._silent > self.max_head_bytes and self.parser is not None and not self.transport.is_closing():
            if self.cycle is None or self.cycle.response_complete:
                self.send_400_response("Invalid HTTP request received.")
            else:  # a trailer: the request's own answer may be under way
                self.transport.close()

    def on_body(self, body: bytes) -> None:
        self._progress = True
        super().on_body(body)

    def on_message_begin(self) -> None:
        self._progress = True
        super().on_message_begin()
        self._head_bytes = 0
        self._in_trailers = False
        if self._head_timer is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._progress = True
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        if self._in_trailers:
            # A chunked body's trailer. uvicorn appends it to the request's headers (the list
            # the app's scope holds), so an app reading its headers after the body would take
            # it for one: a signature or forwarding header added after a proxy checked the
            # head. Dropped, as the ASGI spec's scope has no place for trailers; their size
            # still counts towards max_head_bytes.
            self._head_bytes += len(name) + len(value) + 4
            if self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
                self.transport.close()  # the request's own answer may be under way: no 400
            return
        self._count(len(name) + len(value) + 4)
        if len(self.headers) >= self.max_headers:
            raise HeadTooLarge()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._progress = True
        self._disarm()
        self._head_overdue = False
        self._in_trailers = True
        previous = self.cycle
        if self.url == LIVENESS_PATH and self.limit_concurrency is not None:
            # uvicorn answers 503 to every request once limit_concurrency connections are open,
            # idle keep-alive ones included: under a burst the liveness probe would fail too, and
            # the kubelet restart every pod just when they are all needed. Answering it costs
            # nothing (no store, no body read); readiness stays limited, so an overloaded pod
            # still leaves the Service's rotation.
            limit, self.limit_concurrency = self.limit_concurrency, None
            try:
                super().on_headers_complete()
            finally:
                self.limit_concurrency = limit
        else:
            super().on_headers_complete()
        cycle = self.cycle
        # A new cycle (not an upgrade): its task is created but has not run yet.
        if cycle is not None and cycle is not previous:
            cycle.transport = HeadJoiningTransport(self.transport, cycle)

    def on_message_complete(self) -> None:
        self._progress = True
        super().on_message_complete()
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            mark_body_received(cycle.scope)  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_overdue and not self.pipeline and not self.transport.is_closing():
            self.transport.close()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            raise HeadTooLarge()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # Only while waiting for a request head: a request in progress is the app's to time out.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:
            # A pipelined head, begun while an earlier request is answered: dropping the
            # deadline here would let it trickle forever (nothing re-arms it).
            self._head_overdue = True


def bounded_protocol(
    header_timeout_s: float, max_headers: int, max_head_bytes: int
) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with these bounds."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "max_headers": max_headers, "max_head_bytes": max_head_bytes},
    )
