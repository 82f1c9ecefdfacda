"""Per-record order: the commands for one (link, key) run one at a time, in arrival order, across
any number of worker processes.

Arrival order is `seq`, taken from one counter (INCR) by the accept script. A record's key is only
known once the worker has mapped the delivery, so order is kept in two steps:

    accept     ZADD unplanned:{mapping} seq id          same script, same durable write as the store
    plan       ZADD pending:{link}:{key} seq id for each key it has commands for,
               then ZREM unplanned:{mapping} id          one MULTI
    apply (K)  wait for the turn: no delivery of a mapping sharing K's link with a smaller seq is
               still unplanned, and none with a smaller seq is in pending(K); then take K's lease
               lock (one script, `Ordering.turn`, which also reads what the command needs), apply
    K done     record the command done, link the entry, ZREM pending(K) id, release the lock:
               one script (`Ordering.end`)
    finished   ZREM it from every set it is in (delivered, ignored, dead, purged)

A later delivery therefore waits while an earlier one for the same record is retrying, and a
delivery planned late (picked up after a later one) still goes first. A blocker whose arq job is
gone (finished, expired) will never run again and is dropped on sight, so nothing waits forever
for a delivery that crashed out of the bookkeeping. Waiting is a `Deferred` (no attempt is
counted): a short poll inside the job, then the job is put back until about when its blocker is
due again.

Exceptions, by design: a delivery whose *planning* fails and is retried (an `enrich` fetch) stops
holding up later ones, and so does a patch that waits for its record's create (it yields its turn,
or a create arriving after it would wait for it forever). With `order` set, such a late command is
then skipped as stale instead of overwriting newer data.

While a record has no entry linked, the turn of a command that creates writes down its create
(its pinned body's key) as the record's create in doubt (`creating`), until a link settles it; a
later delivery's turn that finds another's there is told (`Turn.orphan`), so that the worker can
adopt the entry that create may have made before making a second one (docs/delivery.md).

The lease lock (SET NX PX, renewed while held) keeps a command of a delivery that runs twice at
once (a job whose lease expired while its worker was stalled) from overlapping itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.aio import cancel_and_wait, stop_if_cancelled
from bridge.errors import OrderWait
from bridge.queue import arq_adapter, keys

UNPLANNED = keys.UNPLANNED
PENDING = keys.PENDING
REGISTERED = "pending_keys"  # delivery hash field: JSON list of the PENDING sets it joined

WAIT_IN_JOB_S = 1.0  # poll this long inside the job before putting it back
MAX_DEFER_S = 30.0  # look again at least this often while blocked
MIN_DEFER_S = 0.05

# The start of one keyed command, in one round trip, optionally with the delivery's registration
# (what `Ordering.register` does) first. KEYS: pending(K), K's lock, the delivery's done hash, K's
# order value, K's link (entry id), K's create in doubt (`creating`), the G unplanned sets of the
# link's mappings, then, when
# registering, the delivery's hash, its mapping's unplanned set, the W sets to join and the L
# sets to leave, and last the keys of its pins (`Pin`). ARGV: seq, arq queue key, lock token,
# lease ms, command slot, G, W (-1: no registration), L, the delivery's new `pending_keys` (''
# when unchanged), delivery id, retention s, the number P of pins (`Pin`), then each pin's value
# and when it applies ('a' always, 'u' with no entry linked, 'l' with one); the P pins' keys are
# the last P KEYS; and last the key of the command's own create pin ('' if it makes none).
# Returns {DONE} (applied by an earlier run), {WAIT, blocker id, its due time ms}, {LOCKED, lock
# ttl ms} or {GO, last order or false, linked entry id or false, {per pin: the body an earlier run
# pinned, or false}, another delivery's create in doubt or false} (lock now held; each pin that
# applies set, unless one was there; with no entry linked, `creating` names this command's create
# pin unless it names another's, which is returned: see `Turn.orphan`).
# A blocker is alive while its job is in the queue (claimed, due or deferred); one that is not
# will never run again and is dropped from the set.
BEGIN_SCRIPT = """
local g, w, l = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if w >= 0 then
  local r = 6 + g
  for i = r + 3, r + 2 + w do
    redis.call('ZADD', KEYS[i], ARGV[1], ARGV[10])
    redis.call('EXPIRE', KEYS[i], ARGV[11])
  end
  for i = r + 3 + w, r + 2 + w + l do
    redis.call('ZREM', KEYS[i], ARGV[10])
  end
  if ARGV[9] ~= '' then
    redis.call('HSET', KEYS[r + 1], 'pending_keys', ARGV[9])
  end
  redis.call('ZREM', KEYS[r + 2], ARGV[10])
end
if redis.call('HEXISTS', KEYS[3], ARGV[5]) == 1 then return {0} end
local bound = '(' .. ARGV[1]
local function first(set)
  while true do
    local found = redis.call('ZRANGEBYSCORE', set, '-inf', bound, 'LIMIT', 0, 1)[1]
    if not found then return nil end
    local due = redis.call('ZSCORE', ARGV[2], found)
    if due then return {1, found, due} end
    redis.call('ZREM', set, found)
  end
end
for i = 7, 6 + g do
  local found = first(KEYS[i])
  if found then return found end
end
local found = first(KEYS[1])
if found then return found end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then
  return {2, redis.call('PTTL', KEYS[2])}
end
local linked = redis.call('GET', KEYS[5]) or false
local p = tonumber(ARGV[12])
local pinned = {}
for i = 1, p do
  local when, key, found = ARGV[12 + 2 * i], KEYS[#KEYS - p + i], false
  if when == 'a' or (when == 'l') == (linked ~= false) then
    found = redis.call('GET', key)
    if found then
      redis.call('EXPIRE', key, ARGV[11])
    else
      redis.call('SET', key, ARGV[11 + 2 * i], 'EX', ARGV[11])
    end
  end
  pinned[i] = found
end
local orphan = false
if not linked then
  local creating, mine = redis.call('GET', KEYS[6]), ARGV[13 + 2 * p]
  if creating and creating ~= mine then
    orphan = creating
  elseif mine ~= '' then
    redis.call('SET', KEYS[6], mine, 'EX', ARGV[11])
  end
end
return {3, redis.call('GET', KEYS[4]) or false, linked, pinned, orphan}
"""
DONE, WAIT, LOCKED, GO = 0, 1, 2, 3

# The end of one keyed command, in one round trip: record it done, link the entry, remember the
# order value (unless the record's is newer: a run that outlived its lease, whose record a newer
# delivery has updated since, must not put an older one back; compared as the worker's `_older`
# does, as numbers when both are, else as text), leave pending(K) if this delivery owes K
# nothing more, release the lock if ours; for the delivery's last command also mark it delivered
# (what `deliveries.finish` does), take it out of the DLQ, of every ordering set and of the arq
# queue, and delete its arq job's keys.
# KEYS: done hash, lock, pending(K), link, order, delivery, arq job, claim and try counter, DLQ,
# arq queue, the command's 3 pinned bodies (bridge/queue/sent.py: dropped), K's create in doubt
# (dropped with a link), then (finishing) the sets to leave.
# ARGV: slot, done value, retention s, token, leave pending ('1'/''), delivery id, entry id to
# link (or ''), order value (or ''), finish ('1'/'').
END_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[7] ~= '' then redis.call('SET', KEYS[4], ARGV[7]); redis.call('DEL', KEYS[15]) end
if ARGV[8] ~= '' then
  local current = redis.call('GET', KEYS[5])
  local older = false
  if current then
    local new, last = tonumber(ARGV[8]), tonumber(current)
    if new and last then older = new < last else older = ARGV[8] < current end
  end
  if not older then redis.call('SET', KEYS[5], ARGV[8]) end
end
if ARGV[5] == '1' then redis.call('ZREM', KEYS[3], ARGV[6]) end
if redis.call('GET', KEYS[2]) == ARGV[4] then redis.call('DEL', KEYS[2]) end
redis.call('DEL', KEYS[12], KEYS[13], KEYS[14])
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[6], 'status', 'delivered')
  redis.call('HDEL', KEYS[6], 'reason', 'failed_command', 'dead_at', 'pending_keys')
  redis.call('DEL', KEYS[7], KEYS[8], KEYS[9])
  redis.call('ZREM', KEYS[10], ARGV[6])
  redis.call('ZREM', KEYS[11], ARGV[6])
  for i = 16, #KEYS do redis.call('ZREM', KEYS[i], ARGV[6]) end
end
return 1
"""

RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A record's create in doubt ARGV[1] made nothing: replaced by the turn's own create (ARGV[2], the
# key of its pin: it is about to be sent, so in doubt in its turn), or dropped when it makes none.
SETTLE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def unplanned_key(mapping: str) -> str:
    return UNPLANNED + mapping


def pending_key(link: str, key: str) -> str:
    return keys.record(PENDING, link, key)


@dataclass(frozen=True)
class Step:
    """One command of one delivery for one record (link, key): what the ordering needs to know."""

    delivery_id: str
    seq: int
    link: str
    key: str
    slot: str  # what the command is recorded done as (`bridge.worker.slot`)
    order_scope: str | None = None  # the mapping's `order_scope`: order compared per key and scope

    @property
    def lock(self) -> str:
        return keys.record(keys.LOCK, self.link, self.key)

    @property
    def pending(self) -> str:
        return pending_key(self.link, self.key)

    @property
    def linked(self) -> str:
        return keys.record(keys.LINK, self.link, self.key)

    @property
    def creating(self) -> str:
        return keys.record(keys.CREATING, self.link, self.key)

    @property
    def order(self) -> str:
        """The last applied `order` of the record, or of the record's scope (keys of their own,
        named by the key and scope as one JSON array: no scope's key is another's)."""
        if self.order_scope is None:
            return keys.record(keys.ORDER, self.link, self.key)
        return keys.record(keys.SCOPED_ORDER, self.link, orjson.dumps([self.key, self.order_scope]).decode())


@dataclass(frozen=True)
class Registration:
    """A delivery's place in the per-record lines after planning: the pending sets to join (its
    plan's keys) and to leave (joined on an earlier run, no longer in its plan)."""

    delivery_id: str
    mapping: str
    join: list[str]
    leave: list[str]
    changed: bool  # whether the delivery's `pending_keys` field must be rewritten

    @classmethod
    def of(
        cls, delivery_id: str, mapping: str, records: Iterable[tuple[str, str]], previous: list[str]
    ) -> Registration:
        join = sorted({pending_key(link, key) for link, key in records})
        leave = sorted(set(previous) - set(join))
        return cls(delivery_id, mapping, join, leave, join != previous)


@dataclass
class Turn:
    """A step's turn: already done by an earlier run, or its lock held with what it needs to know.
    `pinned`: per `Pin` the turn was given, what an earlier run pinned under it (None: nothing
    was, or the pin did not apply)."""

    step: Step
    token: str
    done: bool = False
    last_order: str | None = None
    entry_id: str | None = None
    ended: bool = False
    pinned: list[bytes | None] = field(default_factory=list)
    # With no entry linked: the pinned-body key (`bridge.queue.sent`) of another delivery's create
    # for this record that may have reached the upstream without its answer linking the entry
    # (the answer was lost, and that delivery then ended another way: dead-lettered, or ignored
    # by a reloaded mapping). Sent again under its key, it gives that entry (see the worker).
    orphan: str | None = None
    creates: str = ""  # the key of this command's own create pin ('' if it makes none)


@dataclass(frozen=True)
class Pin:
    """A request body to pin (`bridge.queue.sent`) in the round trip that starts its command's
    turn, before it is sent: under `key`, `value` (sealed as `SentBodies` seals), unless a body
    is pinned there already (an earlier run's: the turn returns it). `when` the body is the one
    the command sends: ALWAYS, UNLINKED (a create of an upsert: the record has no entry yet) or
    LINKED (a patch: it has one)."""

    ALWAYS: ClassVar[str] = "a"
    UNLINKED: ClassVar[str] = "u"
    LINKED: ClassVar[str] = "l"

    key: str
    value: bytes
    when: str

    @staticmethod
    def applies(when: str, linked: bool) -> bool:
        """Whether a pin set `when` is the body sent, so set by the turn (BEGIN_SCRIPT decides
        the same way), given whether the record had an entry linked."""
        return when == Pin.ALWAYS or (when == Pin.LINKED) == linked


class Ordering:
    """The order bookkeeping of one worker process (state is in Redis)."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention_s: int,
        lease_s: float,
        wait_s: float = WAIT_IN_JOB_S,
        rng: random.Random | None = None,
    ) -> None:
        self._redis = redis
        self._retention_s = retention_s
        self._lease_ms = int(lease_s * 1000)
        self._wait_s = wait_s
        self._rng = rng or random.Random()
        self._begin = redis.register_script(BEGIN_SCRIPT)
        self._end = redis.register_script(END_SCRIPT)
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._settle = redis.register_script(SETTLE_SCRIPT)

    # -- bookkeeping -----------------------------------------------------------------------------

    async def register(
        self,
        delivery_id: str,
        mapping: str,
        seq: int,
        records: Iterable[tuple[str, str]],
        previous: list[str] | None = None,
    ) -> list[str]:
        """After planning: join pending(K) for every (link, key) it still owes a command, leave
        the sets it joined on an earlier run that its new plan no longer has, leave unplanned.
        `previous` is the delivery's `pending_keys` as loaded (read here when not given); returns
        the sets it is in now."""
        delivery = keys.delivery(delivery_id)
        if previous is None:
            before = await cast(Awaitable[bytes | None], self._redis.hget(delivery, REGISTERED))
            previous = orjson.loads(before) if before else []
        plan = Registration.of(delivery_id, mapping, records, previous)
        async with self._redis.pipeline(transaction=True) as pipe:
            for name in plan.join:
                pipe.zadd(name, {delivery_id: seq})
                pipe.expire(name, self._retention_s)
            for name in plan.leave:
                pipe.zrem(name, delivery_id)
            if plan.changed:
                pipe.hset(delivery, REGISTERED, orjson.dumps(plan.join).decode())
            pipe.zrem(unplanned_key(mapping), delivery_id)
            await pipe.execute()
        return plan.join

    async def leave_unplanned(self, delivery_id: str, mapping: str) -> None:
        """Planning failed and will be retried: stop holding up later deliveries meanwhile."""
        await self._redis.zrem(unplanned_key(mapping), delivery_id)

    async def release(self, delivery_id: str, link: str, key: str) -> None:
        """This delivery owes nothing more to (link, key) (or yields its turn)."""
        await self._redis.zrem(pending_key(link, key), delivery_id)

    async def forget(self, delivery_id: str, mapping: str) -> None:
        """The delivery is finished (delivered, ignored, dead): leave every set."""
        await forget(self._redis, delivery_id, mapping)

    # -- a step's turn ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(
        self,
        step: Step,
        mappings: Collection[str],
        registration: Registration | None = None,
        pins: Sequence[Pin] = (),
        creates: str = "",
    ) -> AsyncIterator[Turn]:
        """Wait until no earlier delivery can still touch the step's record and take its lease
        lock (renewed in the background) for the block; one round trip when nothing is in the
        way. Yields a Turn with `done` set, and no lock, when an earlier run applied the step.
        Raises OrderWait when the record stays busy for longer than the wait allowed in a job.
        With `registration`, the first look also does what `register` does (one round trip
        instead of two), before anything else; the look that takes the turn sets the `pins` that
        apply (see `Pin`). `creates`: the key of the command's create pin, if it makes one; with
        no entry linked, the turn records it as the record's create in doubt until a link ends
        the doubt, unless another delivery's is recorded (`Turn.orphan`)."""
        group = [unplanned_key(m) for m in sorted(mappings)]
        names = [
            step.pending,
            step.lock,
            keys.done(step.delivery_id),
            step.order,
            step.linked,
            step.creating,
            *group,
        ]
        token = uuid.uuid4().hex
        common: list[str | int] = [
            step.seq,
            arq_adapter.QUEUE_KEY,
            token,
            self._lease_ms,
            step.slot,
            len(group),
        ]
        args: list[str | int | bytes] = [*common, -1, 0, "", step.delivery_id, self._retention_s]
        pinning: list[str | int | bytes] = [len(pins)]
        for pin in pins:
            pinning += [pin.value, pin.when]
        pinning.append(creates)
        look_names, look_args = names, args  # what the next look sends
        if registration is not None:
            r = registration
            look_names = [*names, keys.delivery(r.delivery_id), unplanned_key(r.mapping), *r.join, *r.leave]
            pending_keys = orjson.dumps(r.join).decode() if r.changed else ""
            look_args = [*common, len(r.join), len(r.leave), pending_keys, r.delivery_id, self._retention_s]
        # the last KEYS; their count, values and `when` after ARGV[11], then `creates`
        pin_keys = [pin.key for pin in pins]
        names, look_names = [*names, *pin_keys], [*look_names, *pin_keys]
        args, look_args = [*args, *pinning], [*look_args, *pinning]
        deadline = time.monotonic() + self._wait_s
        pause = 0.005
        while True:
            try:
                found = await self._begin(keys=look_names, args=look_args)
            except asyncio.CancelledError:
                # Cut (a drain, the job's time limit) after the script may have taken the lock
                # but before its answer came: release it under our token (a no-op if the script
                # did not take it), rather than leave it held for the lease.
                await self._let_go(step.lock, token)
                raise
            look_names, look_args = names, args  # registered by the first look
            kind = int(found[0])
            if kind == DONE:
                yield Turn(step, token, done=True)
                return
            if kind == GO:
                break
            now = time.monotonic()
            if kind == WAIT:
                due_ms = float(found[2]) if found[2] else None
                until_due_s = (due_ms / 1000 - time.time()) if due_ms is not None else 0.0
                if now + max(until_due_s, 0.0) > deadline or now >= deadline:
                    # The blocker is not about to finish: come back around when it is due again.
                    defer = min(MAX_DEFER_S, max(MIN_DEFER_S, until_due_s + 0.1))
                    raise OrderWait(
                        "an earlier delivery for the same record goes first",
                        defer_s=defer * self._rng.uniform(1.0, 1.25),
                    )
            elif now > deadline:
                raise OrderWait(
                    "another worker holds this record's lock",
                    defer_s=min(MAX_DEFER_S, max(MIN_DEFER_S, int(found[1]) / 1000)),
                )
            await asyncio.sleep(pause)  # polling another process's progress, not a test sync
            pause = min(pause * 2, 0.1)
        last_order, entry_id = _text(found[1]), _text(found[2])
        pinned = [value or None for value in found[3]]
        orphan = _text(found[4])
        held = Turn(
            step,
            token,
            last_order=last_order,
            entry_id=entry_id,
            pinned=pinned,
            orphan=orphan,
            creates=creates,
        )
        del names, args, look_names, look_args, pinning, pins, found  # this run's sealed bodies
        renewal = asyncio.get_running_loop().create_task(self._keep(step.lock, token))
        try:
            yield held
        finally:
            await cancel_and_wait(renewal)
            if not held.ended:
                await self._let_go(step.lock, token)

    async def _let_go(self, lock: str, token: str) -> None:
        """Release `lock` if `token` holds it, from a turn that may be being cancelled (a drain,
        the job's time limit): in a task of its own, since on Python 3.11.0-3.11.2 redis-py's
        zero timeout when it takes a pooled connection then raises CancelledError (gh-102780),
        so the lock would stay held, and the record wait, until its lease ran out."""
        await asyncio.shield(self._release(keys=[lock], args=[token]))

    async def link(self, held: Turn, entry_id: str) -> None:
        """Link the step's record to `entry_id` now, before the step ends (`end` links it too):
        the entry exists even if the rest of the step fails. The record's create in doubt, if
        any, is settled by it."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(held.step.linked, entry_id)
            pipe.delete(held.step.creating)
            await pipe.execute()

    async def settle(self, held: Turn, orphan: str) -> None:
        """The record's create in doubt `orphan` turned out to have made nothing (its body is gone:
        refused for good, or expired): forget it, unless another has replaced it meanwhile. The
        turn's own create, if it makes one, is the record's create in doubt in its place (the
        turn did not record it: it found `orphan`)."""
        await self._settle(keys=[held.step.creating], args=[orphan, held.creates, self._retention_s])

    async def end(
        self,
        held: Turn,
        result: str,
        *,
        leave_pending: bool,
        link_to: str | None = None,
        order: str | None = None,
        finish: tuple[str, list[str]] | None = None,
        unpin: Sequence[str],
    ) -> None:
        """The step is applied: record `result` as done, link `link_to`, remember `order`, leave
        pending(K) when the delivery owes K nothing more, drop the command's 3 pinned bodies
        (`unpin`, their keys), and release the lock, all at once.
        `finish=(mapping, sets it joined)` for its last command: the delivery is delivered, and its
        arq job done (the job function then returns `arq_adapter.JobFinished`)."""
        step = held.step
        leave = [unplanned_key(finish[0]), *finish[1]] if finish is not None else []
        await self._end(
            keys=[
                keys.done(step.delivery_id),
                step.lock,
                step.pending,
                step.linked,
                step.order,
                keys.delivery(step.delivery_id),
                *arq_adapter.finished_job_keys(step.delivery_id),
                keys.DLQ,
                arq_adapter.QUEUE_KEY,
                *unpin,
                step.creating,
                *leave,
            ],
            args=[
                step.slot,
                result,
                self._retention_s,
                held.token,
                "1" if leave_pending else "",
                step.delivery_id,
                link_to or "",
                order or "",
                "1" if finish is not None else "",
            ],
        )
        held.ended = True

    async def _keep(self, name: str, token: str) -> None:
        interval_s = self._lease_ms / 3000
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(RedisError, OSError):
                await self._renew(keys=[name], args=[token, self._lease_ms])
            stop_if_cancelled()  # or a lock renewed by a task nobody waits for holds its record


def _text(value: object) -> str | None:
    if value is None or value is False:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def leave_all(pipe: Any, delivery_id: str, mapping: str, joined: Iterable[str]) -> None:
    """Queue on `pipe` what takes a finished delivery out of every ordering set it is in."""
    joined = list(joined)
    for name in joined:
        pipe.zrem(name, delivery_id)
    if joined:
        pipe.hdel(keys.delivery(delivery_id), REGISTERED)
    pipe.zrem(unplanned_key(mapping), delivery_id)


async def forget(redis: Redis, delivery_id: str, mapping: str) -> None:
    """Remove a delivery from every ordering set it is in (finished, purged, expired)."""
    raw = await cast(Awaitable[bytes | None], redis.hget(keys.delivery(delivery_id), REGISTERED))
    async with redis.pipeline(transaction=True) as pipe:
        leave_all(pipe, delivery_id, mapping, orjson.loads(raw) if raw else [])
        await pipe.execute()
