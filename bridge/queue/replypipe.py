"""One Redis connection whose replies are handed to a callback as soon as they are read.

redis-py reads a reply in the task that sent the command: when the reply arrives, the event loop
wakes that task on its next pass, and only then can the task hand the result on, to requests that
run one pass later again. In a busy web process a pass lasts as long as it takes to start every
request that arrived meanwhile, so that hop added milliseconds to every ingest batch
(`bridge.queue.ingest`), during which the deliveries of the batch hold their connections. Here the
protocol parses replies (hiredis) in the loop's read callback and calls the sender's callback right
there. The ingest benchmark measured 15 % more webhooks/s and 15 % less CPU per webhook (the
pipeline objects and per-command work of redis-py are gone too; docs/performance.md).

    pipe = await ReplyPipe.open(redis)          # a connection of the client's own pool
    pipe.send(packed_commands, done)            # done(replies) or done(exception), called once
    await pipe.give_back()                      # closed, and returned to the pool

The connection comes from the client's pool, so it is opened as configured there (TCP, TLS or a
Unix socket; AUTH, database, client name) and is closed with the pool. Its transport is then read
by this protocol instead of redis-py's stream reader. Commands are pipelined: `send` writes at
once, and the replies come back in order. With the pool's `socket_timeout` set, a command not
answered within it closes the connection: everything in flight fails with `TimeoutError`, as a
read by redis-py would.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

Done = Callable[[list[Any] | Exception], None]


@dataclass(slots=True)
class _Exchange:
    """Commands sent together, and what their sender waits for: one reply each."""

    expected: int
    done: Done
    timer: asyncio.TimerHandle | None
    replies: list[Any] = field(default_factory=list)


class ReplyPipe(asyncio.Protocol):
    def __init__(self, timeout_s: float | None) -> None:
        self._reader = hiredis.Reader()
        self._waiting: deque[_Exchange] = deque()
        self._timeout_s = timeout_s
        self._transport: asyncio.Transport | None = None
        self._connection: AbstractConnection | None = None
        self._pool: ConnectionPool | None = None  # where the connection goes back to
        self._stream_protocol: asyncio.BaseProtocol | None = None  # redis-py's, until taken over
        self._lost: Exception | None = None

    @classmethod
    async def open(cls, redis: Redis) -> ReplyPipe:
        """A pipe over a connection taken from `redis`'s pool. Raises what connecting raises."""
        pool = redis.connection_pool
        connection: AbstractConnection = await pool.get_connection()
        try:
            # redis-py (5.3 to 5.x: pyproject, and arq below 6) keeps the stream in `_writer`
            writer = getattr(connection, "_writer", None)
            if not isinstance(writer, asyncio.StreamWriter):
                raise RuntimeError("this redis-py keeps no stream writer on its connections")
            pipe = cls(connection.socket_timeout)
            pipe._connection, pipe._pool = connection, pool
            # (uvloop's transports are not subclasses of asyncio's: no isinstance check)
            transport = cast(asyncio.Transport, writer.transport)
            pipe._stream_protocol = transport.get_protocol()
            transport.set_protocol(pipe)
            pipe.connection_made(transport)
        except BaseException:
            await connection.disconnect(nowait=True)  # never back to the pool half taken over
            await pool.release(connection)
            raise
        return pipe

    @property
    def closed(self) -> bool:
        return self._lost is not None

    @property
    def in_flight(self) -> int:
        """Exchanges sent and not yet answered."""
        return len(self._waiting)

    def send(self, commands: list[bytes], done: Done) -> None:
        """Write packed `commands`; `done` gets their replies in order (a server error is a
        `hiredis.ReplyError` among them), or the exception that ended the connection."""
        if self._lost is not None or self._transport is None:
            done(ConnectionError("the connection is closed"))
            return
        timer = None
        if self._timeout_s and not self._waiting:
            timer = asyncio.get_running_loop().call_later(self._timeout_s, self._timed_out)
        self._waiting.append(_Exchange(len(commands), done, timer))
        self._transport.write(b"".join(commands))

    async def give_back(self) -> None:
        """Close the connection (failing what is in flight) and return it to the pool."""
        self._close(ConnectionError("the connection was closed"))
        connection, pool, self._connection, self._pool = self._connection, self._pool, None, None
        if connection is not None and pool is not None:
            await connection.disconnect(nowait=True)
            await pool.release(connection)

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._close(ConnectionError(f"protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self._waiting:
                self._close(ConnectionError("a reply to no command"))
                return
            exchange = self._waiting[0]
            exchange.replies.append(reply)
            if len(exchange.replies) == exchange.expected:
                self._waiting.popleft()
                if exchange.timer is not None:
                    exchange.timer.cancel()
                    # the next exchange in line is timed from now
                    if self._waiting and self._timeout_s:
                        loop = asyncio.get_running_loop()
                        self._waiting[0].timer = loop.call_later(self._timeout_s, self._timed_out)
                exchange.done(exchange.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(ConnectionError("the connection was lost") if exc is None else ConnectionError(str(exc)))
        # redis-py's own protocol learns of it too: closing the connection (`disconnect()`, as
        # the pool does when it is closed) waits for that.
        stream_protocol, self._stream_protocol = self._stream_protocol, None
        if stream_protocol is not None:
            stream_protocol.connection_lost(exc)

    # -- ending ----------------------------------------------------------------------------------

    def _timed_out(self) -> None:
        self._close(TimeoutError(f"no reply within {self._timeout_s} s"))

    def _close(self, reason: Exception) -> None:
        if self._lost is None:
            self._lost = reason
            if self._transport is not None:
                self._transport.abort()
        waiting, self._waiting = self._waiting, deque()
        for exchange in waiting:
            if exchange.timer is not None:
                exchange.timer.cancel()
            exchange.done(reason)
