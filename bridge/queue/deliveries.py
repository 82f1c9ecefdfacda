"""Stored deliveries and the dead-letter queue.

A delivery is one Redis hash (`lb:d:{id}`), written at ingest and kept for the retention period:
the raw body and the few headers its provider needs to parse it again, its state, and the
history of its attempts. The dead-letter queue is a sorted set of delivery ids by the time they
died; the delivery hash itself holds the reason and the command that failed. Replaying puts the
same delivery (same id, same idempotency keys) back on the queue; the worker removes it from the
dead-letter queue once it is delivered.

With encryption at rest on, the body and headers are stored sealed (see `bridge.queue.ingest`,
field `enc` names the key) and so is the failed command of a dead letter; `load(...,
keyring=...)` opens them. Without a keyring (admin listings, the CLI) a sealed payload is left
out and `payload_error` says why; so does a keyring that lacks the key, and the worker
dead-letters such a delivery with that reason instead of crashing. Values stored in clear
(before encryption was turned on) still load.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from bridge.queue import arq_adapter, crypto, keys, ordering

Status = Literal["queued", "retrying", "delivered", "ignored", "dead"]
MAX_HISTORY = 50


class Attempt(BaseModel):
    model_config = ConfigDict(extra="ignore")

    at: float
    error: str
    retryable: bool
    status: int | None = None
    command: int | None = None


class DeliveryRecord(BaseModel):
    """What `/admin/deliveries/{id}` and `leadbridge dlq show` tell about one delivery."""

    model_config = ConfigDict(extra="ignore")

    id: str
    mapping: str
    provider: str
    event_id: str
    received_at: float = Field(description="unix seconds")
    status: Status
    seq: int = 0
    attempts: int = 0
    reason: str | None = None
    failed_command: dict[str, Any] | None = None
    history: list[Attempt] = Field(default_factory=list)
    dead_at: float | None = None
    replayed_at: float | None = Field(default=None, description="unix seconds of the last replay")
    # A run was cut short by a drain (`mark_cut`): it may have sent requests with no attempt on record.
    cut: bool = Field(default=False, exclude=True)
    held_s: float = Field(
        default=0.0, description="seconds put back without an attempt (breaker open, waiting its turn)"
    )
    # Runs of its job that never ended, this one included (UNFINISHED): more than one, and a
    # worker died while running it.
    unfinished: int = Field(default=0, exclude=True)
    encrypted_with: str | None = Field(default=None, description="key id that sealed the stored payload")
    headers: dict[str, str] = Field(default_factory=dict, exclude=True)
    body: bytes = Field(default=b"", exclude=True)
    # Why body/headers could not be opened (sealed, and no keyring or not the right key).
    payload_error: str | None = Field(default=None, exclude=True)
    # The per-record ordering sets it joined (`bridge.queue.ordering`), as loaded.
    registered: list[str] = Field(default_factory=list, exclude=True)
    # Stored by a version whose worker records an `each` command done, and keys it, by its
    # element's identity (BY_ELEMENT): False for one stored before, whose earlier runs (if any)
    # went by position. The worker goes by position too where an earlier run did
    # (`Deliverer._went_by_position`).
    by_element: bool = Field(default=False, exclude=True)

    def retry_age_s(self, now: float) -> float:
        """How much of its retry window the delivery has used: the time since it arrived, or
        since its last replay (a replay gets a whole window), less the time it was put back
        without an attempt (an open breaker, an earlier delivery's turn)."""
        return max(0.0, self.kept_s(now) - self.held_s)

    def kept_s(self, now: float) -> float:
        """Time since its record's expiry was last set: at its arrival, or at its last replay
        (the record goes BRIDGE_RETENTION_S after that, unless it dies first)."""
        return now - max(self.received_at, self.replayed_at or 0.0)


def _text(raw: dict[bytes, bytes], name: str, default: str = "") -> str:
    value = raw.get(name.encode())
    return value.decode() if value is not None else default


async def load(
    redis: Redis, delivery_id: str, keyring: crypto.Keyring | None = None
) -> DeliveryRecord | None:
    """The stored delivery, its payload opened with `keyring` when it was stored sealed."""
    raw: dict[bytes, bytes] = await cast(
        Awaitable[dict[bytes, bytes]], redis.hgetall(keys.delivery(delivery_id))
    )
    return _record(raw, delivery_id, keyring)


# What the worker reads to start a delivery, by key prefix (the delivery id appended): its hash
# and the commands already applied. The job's claim reads them (`arq_adapter` `preload`).
PRELOAD = (keys.DELIVERY, keys.DONE)
# The delivery's field (written at ingest) that says its `each` commands go by element, not
# position (`DeliveryRecord.by_element`).
BY_ELEMENT = "ids"
# The delivery's field counting its job's runs that have not ended (the claim adds one, an end
# short of done sets 0, a replay too): what a worker that died while running it left behind.
UNFINISHED = "unfinished"


async def load_for_work(
    redis: Redis, delivery_id: str, keyring: crypto.Keyring | None
) -> tuple[DeliveryRecord | None, dict[str, str]]:
    """The worker's read, one round trip: the delivery, and the commands already applied
    (command slot, `worker.slot` -> result) by earlier runs."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.delivery(delivery_id))
        pipe.hgetall(keys.done(delivery_id))
        raw, done = await pipe.execute()
    return for_work(raw, done, delivery_id, keyring)


def for_work(
    raw: dict[bytes, bytes], done: dict[bytes, bytes], delivery_id: str, keyring: crypto.Keyring | None
) -> tuple[DeliveryRecord | None, dict[str, str]]:
    """`load_for_work` from hashes already read (by the job's claim: `PRELOAD`)."""
    return _record(raw, delivery_id, keyring), {k.decode(): v.decode() for k, v in done.items()}


def _record(
    raw: dict[bytes, bytes], delivery_id: str, keyring: crypto.Keyring | None
) -> DeliveryRecord | None:
    if not raw or b"mapping" not in raw:
        return None
    dead_at = raw.get(b"dead_at")
    sealed_with = _text(raw, "enc") or None
    body, headers, payload_error = _payload(raw, delivery_id, sealed_with, keyring)
    failed = _unsealed(raw, "failed_command", delivery_id, keyring, lambda _: None)
    reason = _unsealed(raw, "reason", delivery_id, keyring, lambda exc: f"(sealed: {exc})".encode()) or b""
    history_raw = _unsealed(raw, "history", delivery_id, keyring, lambda _: None) or b"[]"
    registered = raw.get(ordering.REGISTERED.encode())
    return DeliveryRecord(
        id=delivery_id,
        mapping=_text(raw, "mapping"),
        provider=_text(raw, "provider"),
        event_id=_text(raw, "event_id"),
        received_at=int(_text(raw, "received_at", "0")) / 1000,
        status=_text(raw, "status", "queued"),
        seq=int(_text(raw, "seq", "0")),
        attempts=int(_text(raw, "attempts", "0")),
        reason=reason.decode() or None,
        failed_command=orjson.loads(failed) if failed else None,
        history=[Attempt.model_validate(a) for a in orjson.loads(history_raw)],
        dead_at=float(dead_at) if dead_at else None,
        replayed_at=int(_text(raw, "replayed_at", "0")) / 1000 or None,
        cut=b"cut" in raw,
        held_s=float(_text(raw, "held_s", "0")),
        unfinished=int(_text(raw, UNFINISHED, "0")),
        encrypted_with=sealed_with,
        headers=headers,
        body=body,
        payload_error=payload_error,
        registered=orjson.loads(registered) if registered else [],
        by_element=raw.get(BY_ELEMENT.encode()) == b"element",
    )


def _sealed(keyring: crypto.Keyring | None, plain: bytes, delivery_id: str, field: str) -> bytes:
    """A field that may hold lead values, as stored: sealed, bound to its delivery and field,
    when keys are set (the failed command; the reason and the attempts' errors, which keep the
    upstream's own message)."""
    return keyring.seal(plain, crypto.aad(delivery_id, field)) if keyring else plain


def _unsealed(
    raw: dict[bytes, bytes],
    field: str,
    delivery_id: str,
    keyring: crypto.Keyring | None,
    unopened: Callable[[crypto.DecryptError], bytes | None],
) -> bytes | None:
    """A `_sealed` field as written (stored in clear before encryption was on: as it is), or
    what `unopened` makes of the error when it cannot be opened."""
    value = raw.get(field.encode())
    if not value or not crypto.is_sealed(value):
        return value
    try:
        return _open(keyring, value, crypto.aad(delivery_id, field))
    except crypto.DecryptError as exc:
        return unopened(exc)


def _open(keyring: crypto.Keyring | None, sealed: bytes, aad: bytes) -> bytes:
    if keyring is None:
        raise crypto.DecryptError("the stored payload is encrypted and no keys were given to open it")
    return keyring.open(sealed, aad)


def _payload(
    raw: dict[bytes, bytes], delivery_id: str, sealed_with: str | None, keyring: crypto.Keyring | None
) -> tuple[bytes, dict[str, str], str | None]:
    """(body, headers, why they could not be opened) of a stored delivery."""
    body = raw.get(b"body", b"")
    headers = raw.get(b"headers", b"{}")
    if sealed_with is not None:
        try:
            body = _open(keyring, body, crypto.aad(delivery_id, "body"))
            headers = _open(keyring, headers, crypto.aad(delivery_id, "headers"))
        except crypto.DecryptError as exc:
            return b"", {}, str(exc)
    return body, orjson.loads(headers), None


async def status_of(redis: Redis, delivery_id: str) -> str | None:
    """The delivery's status as stored now (None: no record)."""
    raw = await cast(Awaitable[bytes | None], redis.hget(keys.delivery(delivery_id), "status"))
    return raw.decode() if raw is not None else None


async def record_attempt(
    redis: Redis,
    record: DeliveryRecord,
    attempt: Attempt,
    status: Status,
    keyring: crypto.Keyring | None = None,
) -> int:
    """Append to the history (bounded), bump the attempt count, set the status; returns attempts.
    The history (its errors may quote the upstream's message about a lead) is sealed when keys
    are set."""
    history = [*record.history, attempt][-MAX_HISTORY:]
    key = keys.delivery(record.id)
    stored = _sealed(keyring, orjson.dumps([a.model_dump() for a in history]), record.id, "history")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, "attempts", 1)
        pipe.hset(key, mapping={"history": stored, "status": status})
        results = await pipe.execute()
    record.history = history
    record.attempts = int(results[0])
    return record.attempts


async def finish(redis: Redis, record: DeliveryRecord, status: Literal["delivered", "ignored"]) -> None:
    """The delivery is finished: its status (a replay, delivered or now ignored by its
    mapping's `when`, leaves the DLQ and its reason), and out of every ordering set it is in
    (`record.registered`), in one MULTI."""
    key = keys.delivery(record.id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, "status", status)
        pipe.zrem(keys.DLQ, record.id)
        pipe.hdel(key, "reason", "failed_command", "dead_at")
        ordering.leave_all(pipe, record.id, record.mapping, record.registered)
        await pipe.execute()


async def dead_letter(
    redis: Redis,
    delivery_id: str,
    reason: str,
    failed_command: dict[str, Any] | None,
    retention_s: int,
    keyring: crypto.Keyring | None = None,
) -> None:
    """Move a delivery to the DLQ; the failed command (lead values) and the reason (it may quote
    the upstream's message about a lead) are sealed when keys are set."""
    now = time.time()
    key = keys.delivery(delivery_id)
    command = b""
    if failed_command is not None:
        command = _sealed(keyring, orjson.dumps(failed_command), delivery_id, "failed_command")
    fields: dict[str, Any] = {
        "status": "dead",
        "reason": _sealed(keyring, reason.encode(), delivery_id, "reason"),
        "dead_at": repr(now),
        "failed_command": command,
    }
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, retention_s)
        pipe.expire(keys.done(delivery_id), retention_s)
        pipe.zadd(keys.DLQ, {delivery_id: now})
        await pipe.execute()


LISTED = 1000  # dead letters a listing shows (the oldest): `dlq list`, GET /admin/dlq


async def dlq_ids(redis: Redis, limit: int | None = None) -> list[str]:
    """Dead-lettered ids, oldest first (at most `limit`; None: all); ids whose record has
    expired are dropped on the way."""
    raw = await redis.zrange(keys.DLQ, 0, -1 if limit is None else limit - 1)
    ids = [r.decode() for r in raw]
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for delivery_id in ids:
            pipe.exists(keys.delivery(delivery_id))
        exists = await pipe.execute()
    expired = [i for i, alive in zip(ids, exists, strict=True) if not alive]
    if expired:
        await redis.zrem(keys.DLQ, *expired)
    return [i for i, alive in zip(ids, exists, strict=True) if alive]


async def in_dlq(redis: Redis, delivery_id: str) -> bool:
    return await redis.zscore(keys.DLQ, delivery_id) is not None


async def dlq_size(redis: Redis, retention_s: int | None = None) -> int:
    """Entries in the DLQ; with `retention_s`, entries that died longer ago than that (their
    records have expired) are dropped first."""
    if retention_s is not None:
        await redis.zremrangebyscore(keys.DLQ, "-inf", f"({time.time() - retention_s}")
    return int(await redis.zcard(keys.DLQ))


QUEUED, NOT_IN_DLQ, REPLAYING = 1, 0, -1  # what a replay (and, but QUEUED, a purge) answers

# Replay a dead letter, atomically: only while it is in the DLQ, and not while a run of an earlier
# replay is under way (its job's claim is held) unless that run has already dead-lettered it (the
# instant before the job's end: the job then leaves the replay's place in the queue, see
# arq_adapter DONE_SCRIPT). A run under way was planned with the mapping it started with; if it
# dies, it takes the job out of the queue, and a replay asked for meanwhile would go with it,
# reported queued but never run: refused instead. A claim is a replay's run only if it was taken
# since that replay (the claim counts the run in UNFINISHED, which a replay sets to 0): the claim
# of the run that dead-lettered the delivery, not released yet when an earlier replay of the same
# instant set the status back to queued, is no run of a replay, and the replay is absorbed by the
# queued one. KEYS: DLQ, delivery hash, arq queue, done hash, the job's claim. ARGV: the id,
# retention s, now ms, the unplanned-set prefix. Returns QUEUED, NOT_IN_DLQ, REPLAYING.
REPLAY_SCRIPT = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local found = redis.call('HMGET', KEYS[2], 'mapping', 'seq', 'status', 'unfinished')
if not found[1] then return 0 end
if found[3] ~= 'dead' and tonumber(found[4] or '0') > 0 and redis.call('EXISTS', KEYS[5]) == 1 then
  return -1
end
redis.call('HSET', KEYS[2], 'status', 'queued', 'attempts', 0, 'history', '[]', 'replayed_at', ARGV[3],
  'held_s', 0, 'unfinished', 0)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[4], ARGV[2])
redis.call('ZADD', ARGV[4] .. found[1], tonumber(found[2] or '0'), ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
"""


HOLD_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBYFLOAT', KEYS[1], 'held_s', ARGV[1]) end
return 1
"""


CUT_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'cut', '1') end
return 1
"""


async def mark_cut(redis: Redis, delivery_id: str) -> None:
    """A run of the delivery was cut short (a drain) after it may have sent something: later
    runs read what it pinned (`DeliveryRecord.cut`). Nothing for one that has expired."""
    await redis.register_script(CUT_SCRIPT)(keys=[keys.delivery(delivery_id)])


async def hold(redis: Redis, delivery_id: str, seconds: float) -> None:
    """Count `seconds` the delivery is put back without an attempt (`retry_age_s`); nothing for
    one that has expired (no hash is made again without its expiry)."""
    await redis.register_script(HOLD_SCRIPT)(keys=[keys.delivery(delivery_id)], args=[seconds])


async def enqueue_again(redis: Redis, delivery_id: str, retention_s: int) -> int:
    """Replay a dead-lettered delivery: put it back on the queue under its own id, so it keeps its
    idempotency keys, its arrival order (`seq`) and the record of commands already applied.
    QUEUED; NOT_IN_DLQ (and nothing done) when it is not in the DLQ, checked in the same atomic
    step: a replay racing the delivery of an earlier replay is either absorbed by it (still
    queued) or refused, never lost; REPLAYING (nothing done) while a run of an earlier replay is
    under way: that run goes with the mapping it started with, and if it dies the replay must be
    asked for again (see REPLAY_SCRIPT)."""
    now_ms = int(time.time() * 1000)
    outcome = await redis.register_script(REPLAY_SCRIPT)(
        keys=[
            keys.DLQ,
            keys.delivery(delivery_id),
            arq_adapter.QUEUE_KEY,
            keys.done(delivery_id),
            arq_adapter.in_progress_key(delivery_id),
        ],
        args=[delivery_id, retention_s, now_ms, ordering.UNPLANNED],
    )
    return int(outcome)


# Purge a dead letter, atomically: only while it is in the DLQ and dead. A replayed delivery stays
# listed in the DLQ until it is delivered, but it is queued or running then: deleting its record
# would lose the lead the operator asked to deliver (its job then finds nothing), or let a running
# job write the record back without an expiry. KEYS: DLQ, delivery hash, done hash. ARGV: the id.
# Returns 1 purged, 0 not in the DLQ, -1 being replayed (queued, retrying or running).
PURGE_SCRIPT = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local status = redis.call('HGET', KEYS[2], 'status')
if status and status ~= 'dead' then return -1 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""

PURGED = 1


async def purge(redis: Redis, delivery_id: str) -> int:
    """Delete a dead letter for good (DLQ purge): its record, its progress and its place in line.
    PURGED, NOT_IN_DLQ, or REPLAYING (a replay of it is queued or running: left alone)."""
    raw = await cast(
        Awaitable[list[bytes | None]],
        redis.hmget(keys.delivery(delivery_id), ["mapping", ordering.REGISTERED]),
    )
    outcome = int(
        await redis.register_script(PURGE_SCRIPT)(
            keys=[keys.DLQ, keys.delivery(delivery_id), keys.done(delivery_id)], args=[delivery_id]
        )
    )
    mapping, registered = raw
    if outcome == PURGED and mapping is not None:
        async with redis.pipeline(transaction=True) as pipe:
            joined = orjson.loads(registered) if registered else []
            ordering.leave_all(pipe, delivery_id, mapping.decode(), joined)
            await pipe.execute()
    return outcome


async def queue_stats(redis: Redis) -> tuple[int, float]:
    """(queue depth, age in seconds of the oldest delivery that is due now)."""
    now_ms = time.time() * 1000
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(arq_adapter.QUEUE_KEY)
        pipe.zrangebyscore(arq_adapter.QUEUE_KEY, "-inf", now_ms, start=0, num=1, withscores=True)
        depth, oldest = await pipe.execute()
    age = max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0.0
    return int(depth), age
