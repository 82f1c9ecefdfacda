"""Durable acceptance of verified webhooks: dedupe + store + enqueue, batched.

One Lua script stores a whole batch; for each delivery it does, atomically: look up the dedupe
record (a hit answers "duplicate" with the first delivery's id); otherwise write the delivery,
its entry in arq's queue (the job id is the delivery id; there is no job record), its place in
arrival order (`seq`, and the mapping's "unplanned" set of `bridge.queue.ordering`), and only
then the dedupe record. "Seen" is
therefore never recorded without the work being stored, and both are written by the same
command, so they are equally durable.

Concurrent requests are grouped: what arrives during one pass of the event loop goes together,
and while BATCHES_IN_FLIGHT batches are in flight, new deliveries wait and go together in the
next one (a single command and round trip and, with the embedded server's `appendfsync always`,
a single fsync). The script goes with every batch (EVAL, 1.6 KB beside some 50 KB of
deliveries; the server caches its compiled form): EVALSHA would fail with NOSCRIPT after a
restart of the server, and a batch sent again after that could be stored after one sent later
(another process can load the script in between), out of arrival order. Optionally the batch
waits for replicas (`WAIT`) before anyone is answered.
Batches travel over one connection read by `bridge.queue.replypipe.ReplyPipe`, which answers a
batch's callers from the loop's read callback, without waking a task first.

With encryption at rest on (a non-empty `Keyring`), the body and headers are sealed here, before
they are sent to the store: the script receives only ciphertext, and marks the delivery with the
id of the key that sealed it (field `enc`; see `bridge.queue.crypto`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hiredis
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.errors import QueueUnavailable
from bridge.queue import arq_adapter, crypto, keys, ordering
from bridge.queue.replypipe import ReplyPipe

# Stores a whole batch, each delivery as described above, in one command.
# KEYS: the arq queue, the seq counter, then per delivery: its dedupe record, its hash, its
# mapping's unplanned set. ARGV: retention s, now ms, dedupe window s, key id ('' when stored in
# clear), the channel that wakes idle workers, then per delivery: mapping, provider, event id,
# headers, body, delivery id. Each delivery is marked as one whose `each` commands go by element
# (field `ids`: `deliveries.BY_ELEMENT`). Returns per delivery: 1, its id (stored) or 0, the first
# delivery's id (duplicate). Per batch, not per delivery: one MGET of the dedupe records (a
# duplicate of an earlier delivery of the same batch is found in `first_in_batch`), the seq
# counter read and written once, one ZADD to the queue, one ZADD + EXPIRE per mapping's line.
# That cuts the server's CPU per delivery by about a third (bench/accept_bench.py: 26-30 us
# against 36-53 us).
ACCEPT_SCRIPT = """
local retention, now, window, enc = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local count = (#KEYS - 2) / 3
local seen = {}
for n = 1, count do
  seen[n] = KEYS[n * 3]
end
local found = redis.call('MGET', unpack(seen))
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local first_in_batch, queued, unplanned, out = {}, {}, {}, {}
for n = 0, count - 1 do
  local k, a = 2 + n * 3, 5 + n * 6
  local existing = found[n + 1] or first_in_batch[KEYS[k + 1]]
  if existing then
    out[#out + 1] = 0
    out[#out + 1] = existing
  else
    local id = ARGV[a + 6]
    seq = seq + 1
    redis.call('HSET', KEYS[k + 2], 'mapping', ARGV[a + 1], 'provider', ARGV[a + 2],
      'event_id', ARGV[a + 3], 'received_at', now, 'headers', ARGV[a + 4], 'body', ARGV[a + 5],
      'status', 'queued', 'seq', seq, 'attempts', 0, 'ids', 'element')
    if enc ~= '' then
      redis.call('HSET', KEYS[k + 2], 'enc', enc)
    end
    redis.call('EXPIRE', KEYS[k + 2], retention)
    redis.call('SET', KEYS[k + 1], id, 'EX', window)
    first_in_batch[KEYS[k + 1]] = id
    queued[#queued + 1] = now
    queued[#queued + 1] = id
    local line = unplanned[KEYS[k + 3]]
    if not line then
      line = {}
      unplanned[KEYS[k + 3]] = line
    end
    line[#line + 1] = seq
    line[#line + 1] = id
    out[#out + 1] = 1
    out[#out + 1] = id
  end
end
-- Written in every batch, one of duplicates only too: a WAIT after it then covers everything
-- written before (the first copies), not just this connection's own last write.
redis.call('SET', KEYS[2], seq)
if #queued > 0 then
  redis.call('ZADD', KEYS[1], unpack(queued))
  for key, line in pairs(unplanned) do
    redis.call('ZADD', key, unpack(line))
    redis.call('EXPIRE', key, retention)
  end
  redis.call('PUBLISH', ARGV[5], '1')
end
return out
"""


def _pack(*parts: Any) -> bytes:
    """One command in RESP, packed by hiredis (as redis-py does; see bridge/queue/resp.py)."""
    packed: bytes = hiredis.pack_command(parts)
    return packed


log = logging.getLogger("bridge.ingest")

MAX_BATCH = 512
# Batches sent before the first is answered. With one, what arrives during a round trip waits for
# it, then for its own; with two, it goes at once, and the server runs them back to back.
BATCHES_IN_FLIGHT = 2


@dataclass(frozen=True)
class Incoming:
    """A verified, parsed-enough webhook ready to be stored."""

    mapping: str
    provider: str
    event_id: str
    body: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Accepted:
    delivery_id: str
    duplicate: bool


def new_delivery_id(now_ms: int | None = None, counter: int = 0) -> str:
    """32 hex digits: milliseconds, a counter, 64 random bits. Ids made by one process sort in
    the order they were made, so deliveries enqueued in the same millisecond (same arq score)
    are picked up in arrival order. The random bits make ids unique across processes; they are
    not a secret (nothing is authorised by knowing an id), so `random`'s generator (seeded from
    the OS, and again in a forked child) is enough, and cheaper than the OS's random source on
    every webhook."""
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    bits = random.getrandbits(64)
    return f"{stamp & 0xFFFFFFFFFFFF:012x}{counter & 0xFFFF:04x}{bits:016x}"


class Accepter:
    """Stores deliveries durably, batching concurrent callers into one round trip.

    Batches go over one connection (`ReplyPipe`), at most BATCHES_IN_FLIGHT at a time. A batch
    is answered in the loop's read callback, and what waited meanwhile is sent from there too.
    Any failure of a batch (connection, timeout, server error, too few replicas) answers each of
    its callers QueueUnavailable: a webhook is answered 202 only once it is stored."""

    def __init__(
        self,
        redis: Redis,
        *,
        dedupe_window_s: int,
        retention_s: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        keyring: crypto.Keyring | None = None,
    ) -> None:
        self._redis = redis
        self._keyring = keyring or crypto.Keyring([])
        self._dedupe_window_s = dedupe_window_s
        self._retention_s = retention_s
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._pending: list[tuple[Incoming, asyncio.Future[Accepted]]] = []
        self._pipe: ReplyPipe | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._send_scheduled = False
        self._counter = 0

    def _next_counter(self) -> int:
        self._counter = (self._counter + 1) & 0xFFFF
        return self._counter

    async def accept(self, incoming: Incoming) -> Accepted:
        """Store one delivery; returns once it is durable. Raises QueueUnavailable."""
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._pending.append((incoming, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        """Get what is pending sent: at the end of this pass of the event loop (the requests it
        is running join the batch), or once connected."""
        if self._send_scheduled or not self._pending:
            return
        pipe = self._pipe
        if pipe is None or pipe.closed:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
        elif pipe.in_flight < BATCHES_IN_FLIGHT:
            self._send_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_when_scheduled)

    async def _connect(self) -> None:
        try:
            if self._pipe is not None and self._pipe.closed:
                closed, self._pipe = self._pipe, None
                await closed.give_back()
            if self._pipe is None:
                self._pipe = await ReplyPipe.open(self._redis)
        except BaseException as exc:  # whatever it is, the callers get an answer
            if not isinstance(exc, (RedisError, OSError, asyncio.CancelledError)):
                log.exception("cannot open the ingest connection")
            failed, self._pending = self._pending, []
            self._fail(failed)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._connecting = None
        self._kick()

    def _send_when_scheduled(self) -> None:
        self._send_scheduled = False
        self._send()

    def _send(self) -> None:
        """Send pending batches while the connection has room for them."""
        pipe = self._pipe
        while self._pending and pipe is not None and not pipe.closed:
            if pipe.in_flight >= BATCHES_IN_FLIGHT:
                return
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                commands = self._commands(batch)
            except Exception:  # a bug, or a keyring that cannot seal: answer, never leave waiting
                log.exception("cannot build an ingest batch")
                self._fail(batch)
                continue
            pipe.send(commands, functools.partial(self._answered, batch))
        self._kick()  # not connected: connect first

    def _commands(self, batch: list[tuple[Incoming, asyncio.Future[Accepted]]]) -> list[bytes]:
        now_ms = int(time.time() * 1000)
        names: list[str] = [arq_adapter.QUEUE_KEY, keys.SEQ]
        args: list[Any] = [
            self._retention_s,
            now_ms,
            self._dedupe_window_s,
            self._keyring.current_key_id,
            keys.WAKE,
        ]
        for incoming, _ in batch:
            delivery_id = new_delivery_id(now_ms, self._next_counter())
            names += (
                keys.seen(incoming.mapping, incoming.event_id),
                keys.delivery(delivery_id),
                ordering.unplanned_key(incoming.mapping),
            )
            args += (
                incoming.mapping,
                incoming.provider,
                incoming.event_id,
                *self._payload(incoming, delivery_id),
                delivery_id,
            )
        commands = [_pack("EVAL", ACCEPT_SCRIPT, len(names), *names, *args)]
        if self._wait_replicas:
            commands.append(_pack("WAIT", self._wait_replicas, self._wait_timeout_ms))
        return commands

    def _payload(self, incoming: Incoming, delivery_id: str) -> tuple[bytes, bytes]:
        """The stored headers and body: sealed when encryption at rest is on, else as received."""
        headers = orjson.dumps(dict(incoming.headers))
        if not self._keyring:
            return headers, incoming.body
        return (
            self._keyring.seal(headers, crypto.aad(delivery_id, "headers")),
            self._keyring.seal(incoming.body, crypto.aad(delivery_id, "body")),
        )

    def _answered(
        self, batch: list[tuple[Incoming, asyncio.Future[Accepted]]], outcome: list[Any] | Exception
    ) -> None:
        """A batch's replies (in the read callback of the connection), or why there are none."""
        if isinstance(outcome, Exception):
            self._fail(batch)
        elif any(isinstance(reply, hiredis.ReplyError) for reply in outcome) or (
            self._wait_replicas and int(outcome[1]) < self._wait_replicas
        ):
            # Stored on the primary perhaps, but not known durable: the provider retries, and the
            # retry is answered "duplicate" once the first copy is known durable (its batch writes
            # too, so its WAIT covers the first copy), so nothing is lost.
            self._fail(batch)
        else:
            self._answer(batch, outcome[0])
        self._send()

    @staticmethod
    def _fail(batch: list[tuple[Incoming, asyncio.Future[Accepted]]]) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(QueueUnavailable())

    @staticmethod
    def _answer(batch: list[tuple[Incoming, asyncio.Future[Accepted]]], stored: list[Any]) -> None:
        for n, (_, future) in enumerate(batch):
            created, delivery_id = stored[2 * n], stored[2 * n + 1]
            if not future.done():
                future.set_result(Accepted(delivery_id=delivery_id.decode(), duplicate=not created))
