"""Per-record order: the commands for one (link, key) run one at a time, in arrival order, across
any number of worker processes.

Arrival order is `seq`, taken from one counter (INCR) by the accept script. A record's key is only
known once the worker has mapped the delivery, so order is kept in two steps:

    accept     ZADD unplanned:{mapping} seq id          same script, same durable write as the store
    plan       ZADD pending:{link}:{key} seq id for each key it has commands for,
               then ZREM unplanned:{mapping} id          one MULTI
    apply (K)  wait for the turn: no delivery of a mapping sharing K's link with a smaller seq is
               still unplanned, and none with a smaller seq is in pending(K); then take K's lease
               lock, apply, record the command done
    K done     ZREM pending(K) id                        with the "done" record, one MULTI
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

The lease lock (SET NX PX, renewed while held) keeps a command of a delivery that runs twice at
once (a job whose lease expired while its worker was stalled) from overlapping itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Collection, Iterable
from typing import cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.errors import OrderWait
from bridge.queue import arq_adapter, keys

UNPLANNED = keys.UNPLANNED
PENDING = keys.PENDING
REGISTERED = "pending_keys"  # delivery hash field: JSON list of the PENDING sets it joined

WAIT_IN_JOB_S = 1.0  # poll this long inside the job before putting it back
MAX_DEFER_S = 30.0  # look again at least this often while blocked
MIN_DEFER_S = 0.05

# KEYS[1]: pending(K); KEYS[2..]: unplanned sets of the link's mappings.
# ARGV: seq, arq job key prefix, arq queue key. Returns {blocker id, its due time ms or false} | false.
BLOCKER_SCRIPT = """
local bound = '(' .. ARGV[1]
local function first(set)
  while true do
    local found = redis.call('ZRANGEBYSCORE', set, '-inf', bound, 'LIMIT', 0, 1)[1]
    if not found then return nil end
    if redis.call('EXISTS', ARGV[2] .. found) == 1 then return found end
    redis.call('ZREM', set, found)
  end
end
for i = 2, #KEYS do
  local found = first(KEYS[i])
  if found then return {found, redis.call('ZSCORE', ARGV[3], found) or false} end
end
local found = first(KEYS[1])
if found then return {found, redis.call('ZSCORE', ARGV[3], found) or false} end
return false
"""

RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def unplanned_key(mapping: str) -> str:
    return UNPLANNED + mapping


def pending_key(link: str, key: str) -> str:
    return keys.record(PENDING, link, key)


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
        self._blocker = redis.register_script(BLOCKER_SCRIPT)
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)

    # -- bookkeeping -----------------------------------------------------------------------------

    async def register(
        self, delivery_id: str, mapping: str, seq: int, records: Iterable[tuple[str, str]]
    ) -> None:
        """After planning: join pending(K) for every (link, key) it still owes a command, leave
        the sets it joined on an earlier run that its new plan no longer has, leave unplanned."""
        wanted = sorted({pending_key(link, key) for link, key in records})
        delivery = keys.delivery(delivery_id)
        before = await cast(Awaitable[bytes | None], self._redis.hget(delivery, REGISTERED))
        previous: list[str] = orjson.loads(before) if before else []
        async with self._redis.pipeline(transaction=True) as pipe:
            for name in wanted:
                pipe.zadd(name, {delivery_id: seq})
                pipe.expire(name, self._retention_s)
            for name in set(previous) - set(wanted):
                pipe.zrem(name, delivery_id)
            if wanted != previous:
                pipe.hset(delivery, REGISTERED, orjson.dumps(wanted).decode())
            pipe.zrem(unplanned_key(mapping), delivery_id)
            await pipe.execute()

    async def leave_unplanned(self, delivery_id: str, mapping: str) -> None:
        """Planning failed and will be retried: stop holding up later deliveries meanwhile."""
        await self._redis.zrem(unplanned_key(mapping), delivery_id)

    async def release(self, delivery_id: str, link: str, key: str) -> None:
        """This delivery owes nothing more to (link, key) (or yields its turn)."""
        await self._redis.zrem(pending_key(link, key), delivery_id)

    async def forget(self, delivery_id: str, mapping: str) -> None:
        """The delivery is finished (delivered, ignored, dead): leave every set."""
        await forget(self._redis, delivery_id, mapping)

    # -- waiting for the turn --------------------------------------------------------------------

    async def wait_turn(
        self, delivery_id: str, seq: int, link: str, key: str, mappings: Collection[str]
    ) -> None:
        """Return once no earlier delivery can still touch (link, key); else raise OrderWait."""
        names = [pending_key(link, key), *(unplanned_key(m) for m in sorted(mappings))]
        deadline = time.monotonic() + self._wait_s
        pause = 0.005
        while True:
            found = await self._blocker(
                keys=names, args=[seq, arq_adapter.job_key(""), arq_adapter.QUEUE_KEY]
            )
            if not found:
                return
            due_ms = float(found[1]) if found[1] else None
            until_due_s = (due_ms / 1000 - time.time()) if due_ms is not None else 0.0
            now = time.monotonic()
            if now + max(until_due_s, 0.0) > deadline or now >= deadline:
                # The blocker is not about to finish: come back around when it is due again.
                defer = min(MAX_DEFER_S, max(MIN_DEFER_S, until_due_s + 0.1))
                raise OrderWait(
                    "an earlier delivery for the same record goes first",
                    defer_s=defer * self._rng.uniform(1.0, 1.25),
                )
            await asyncio.sleep(pause)  # polling another process's progress, not a test sync
            pause = min(pause * 2, 0.1)

    # -- the lease lock ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, link: str, key: str) -> AsyncIterator[None]:
        """Hold (link, key)'s lease lock, renewed in the background, for the block's duration."""
        name = keys.record(keys.LOCK, link, key)
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self._wait_s
        pause = 0.005
        while not await self._redis.set(name, token, nx=True, px=self._lease_ms):
            if time.monotonic() > deadline:
                ttl_ms = await cast(Awaitable[int], self._redis.pttl(name))
                raise OrderWait(
                    "another worker holds this record's lock",
                    defer_s=min(MAX_DEFER_S, max(MIN_DEFER_S, ttl_ms / 1000)),
                )
            await asyncio.sleep(pause)  # waiting on another process's lease, not a test sync
            pause = min(pause * 2, 0.1)
        renewal = asyncio.get_running_loop().create_task(self._keep(name, token))
        try:
            yield
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            await self._release(keys=[name], args=[token])

    async def _keep(self, name: str, token: str) -> None:
        interval_s = self._lease_ms / 3000
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(RedisError, OSError):
                await self._renew(keys=[name], args=[token, self._lease_ms])


async def forget(redis: Redis, delivery_id: str, mapping: str) -> None:
    """Remove a delivery from every ordering set it is in (finished, purged, expired)."""
    delivery = keys.delivery(delivery_id)
    raw = await cast(Awaitable[bytes | None], redis.hget(delivery, REGISTERED))
    joined: list[str] = orjson.loads(raw) if raw else []
    async with redis.pipeline(transaction=True) as pipe:
        for name in joined:
            pipe.zrem(name, delivery_id)
        if joined:
            pipe.hdel(delivery, REGISTERED)
        pipe.zrem(unplanned_key(mapping), delivery_id)
        await pipe.execute()
