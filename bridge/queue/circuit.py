"""The upstream circuit breaker, shared by every worker process through one Redis hash.

    closed ──(at least min_calls calls in the last window_s, failure_ratio of them failed)──▶ open
    open ──(open_s later)──▶ half-open: one call at a time, across all workers, goes as the probe
    probe succeeded ──▶ closed, with an empty window
    probe failed ──▶ open again, for twice as long (at most max_open_s)

While it is not closed, a delivery that wants to call the upstream raises `CircuitOpen` (a
`Deferred`): the job is put back until the breaker may let a probe through, and no attempt is
counted, so an outage does not burn every lead's retry budget.

What counts: a failure says the upstream is down (no answer: connect error or timeout; a 5xx;
a 408). Any other answer is a success, even a 4xx (the upstream is up and refused one request),
except a 429, which is pacing and counts neither way (its Retry-After is honoured per job).

State lives in the hash `keys.CIRCUIT`: `state`, `opened_ms`, `open_ms`, `probe_ms` (the probe's
lease) and per-second counters `o:<unix second>` / `f:<unix second>`. Both scripts touch only that
key, so every decision is atomic across processes. The hash expires when idle (closed by default).
A process caches "closed" for `CLOSED_CACHE_S`, and while it does it counts successes locally and
records them at most every `CLOSED_CACHE_S` (with the next failure at the latest), so a healthy
upstream costs a few Redis calls per second per process, not two per upstream call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from redis.asyncio import Redis

from bridge.errors import CircuitOpen, UpstreamError
from bridge.queue import keys
from bridge.settings import Settings

CLOSED_CACHE_S = 0.2
MAX_PROBE_WAIT_S = 1.0  # a job waiting for someone else's probe looks again this soon (or open_s)

T = TypeVar("T")

ALLOW_SCRIPT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return {0, 0} end
local now = tonumber(ARGV[1])
local ready = tonumber(redis.call('HGET', KEYS[1], 'opened_ms') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'open_ms') or '0')
if now < ready then return {1, ready - now} end
local probe = tonumber(redis.call('HGET', KEYS[1], 'probe_ms') or '0')
if probe > now then return {3, probe - now} end
redis.call('HSET', KEYS[1], 'probe_ms', now + tonumber(ARGV[2]))
return {2, 0}
"""

RECORD_SCRIPT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local failed = ARGV[2] == '1'
local probe = ARGV[3] == '1'
local window = tonumber(ARGV[4])
local min_calls = tonumber(ARGV[5])
local ratio = tonumber(ARGV[6])
local open_ms = tonumber(ARGV[7])
local max_open_ms = tonumber(ARGV[8])
local ttl_ms = tonumber(ARGV[9])
local state = redis.call('HGET', key, 'state')
if state == 'open' then
  if not probe then return 'open' end
  if failed then
    local current = tonumber(redis.call('HGET', key, 'open_ms') or ARGV[7])
    redis.call('HSET', key, 'opened_ms', now, 'open_ms', math.min(current * 2, max_open_ms), 'probe_ms', 0)
    redis.call('PEXPIRE', key, ttl_ms)
    return 'open'
  end
  redis.call('DEL', key)
  return 'closed'
end
local sec = math.floor(now / 1000)
local oks = tonumber(ARGV[10])
if oks > 0 then redis.call('HINCRBY', key, 'o:' .. sec, oks) end
if failed then redis.call('HINCRBY', key, 'f:' .. sec, 1) end
local old = {}
for s = sec - 3 * window, sec - window do
  old[#old + 1] = 'o:' .. s
  old[#old + 1] = 'f:' .. s
end
redis.call('HDEL', key, unpack(old))
redis.call('PEXPIRE', key, ttl_ms)
if not failed then return 'closed' end
local names = {}
for s = sec - window + 1, sec do
  names[#names + 1] = 'o:' .. s
  names[#names + 1] = 'f:' .. s
end
local values = redis.call('HMGET', key, unpack(names))
local total, fails = 0, 0
for i = 1, #values, 2 do
  local ok = tonumber(values[i] or '0') or 0
  local bad = tonumber(values[i + 1] or '0') or 0
  total = total + ok + bad
  fails = fails + bad
end
if total >= min_calls and fails >= ratio * total then
  redis.call('HSET', key, 'state', 'open', 'opened_ms', now, 'open_ms', open_ms, 'probe_ms', 0)
  return 'opened'
end
return 'closed'
"""


@dataclass(frozen=True)
class CircuitConfig:
    window_s: int = 10
    min_calls: int = 20
    failure_ratio: float = 0.5
    open_s: float = 5.0
    max_open_s: float = 120.0
    probe_lease_s: float = 15.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CircuitConfig:
        return cls(
            window_s=settings.circuit_window_s,
            min_calls=settings.circuit_min_calls,
            failure_ratio=settings.circuit_failure_ratio,
            open_s=settings.circuit_open_s,
            max_open_s=max(settings.circuit_max_open_s, settings.circuit_open_s),
            # a probe is one upstream call: its lease outlives the call's own timeout
            probe_lease_s=settings.upstream_timeout_s * 2 + 1,
        )


def counts_as_failure(exc: UpstreamError) -> bool | None:
    """True: the upstream looks down; False: it answered; None: a 429, which counts neither way."""
    if exc.status is None or exc.status >= 500 or exc.status in (401, 408):
        return True  # no answer, a failing upstream, or one that refuses our key (every call)
    if exc.status == 429:
        return None
    return False


async def read_state(redis: Redis) -> str:
    """'closed' or 'open' (a half-open breaker is still open: only probes go through)."""
    raw = await cast(Awaitable[bytes | None], redis.hget(keys.CIRCUIT, "state"))
    return "open" if raw == b"open" else "closed"


class CircuitBreaker:
    """One per worker process; the state is shared through Redis."""

    def __init__(
        self,
        redis: Redis,
        config: CircuitConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._on_change = on_change
        self._allow = redis.register_script(ALLOW_SCRIPT)
        self._record = redis.register_script(RECORD_SCRIPT)
        self._closed_until = 0.0
        self._open = False
        self._unsent_ok = 0  # successes counted here, not yet recorded in Redis
        self._flush_at = 0.0

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _seen(self, is_open: bool) -> None:
        if is_open != self._open:
            self._open = is_open
            if self._on_change is not None:
                self._on_change(is_open)

    async def before(self) -> bool:
        """Before an upstream call: True if this call is the probe; raises CircuitOpen to wait."""
        if time.monotonic() < self._closed_until:
            return False
        reply = await self._allow(
            keys=[keys.CIRCUIT], args=[self._now_ms(), int(self.config.probe_lease_s * 1000)]
        )
        verdict, wait_s = int(reply[0]), int(reply[1]) / 1000
        if verdict == 0:
            self._seen(False)
            self._closed_until = time.monotonic() + CLOSED_CACHE_S
            return False
        self._seen(True)
        self._closed_until = 0.0
        if verdict == 2:
            return True
        if verdict == 3:  # someone else's probe is in flight: look again about when it may be done
            wait_s = min(wait_s, max(MAX_PROBE_WAIT_S, self.config.open_s))
        raise CircuitOpen("the upstream circuit breaker is open", defer_s=wait_s)

    async def after(self, *, failed: bool | None, probe: bool) -> str:
        """Record one call's outcome; returns the state it left. None (a 429) counts neither
        way, except for a probe: any answer shows the upstream is up."""
        if failed is None and not probe:
            return "open" if self._open else "closed"
        now = time.monotonic()
        if not failed:
            self._unsent_ok += 1
            if not probe and now < self._closed_until and now < self._flush_at:
                return "closed"
        oks, self._unsent_ok = self._unsent_ok, 0
        self._flush_at = now + CLOSED_CACHE_S
        c = self.config
        state = await self._record(
            keys=[keys.CIRCUIT],
            args=[
                self._now_ms(),
                1 if failed else 0,
                1 if probe else 0,
                c.window_s,
                c.min_calls,
                c.failure_ratio,
                int(c.open_s * 1000),
                int(c.max_open_s * 1000),
                int((c.window_s + c.max_open_s + c.probe_lease_s) * 2000),
                oks,
            ],
        )
        text = state.decode() if isinstance(state, bytes) else str(state)
        if text == "closed":
            self._seen(False)
        else:
            self._closed_until = 0.0
            self._seen(True)
        return text


class Upstream(Protocol):
    """What the worker calls on the Connect API (ConnectClient, or GuardedConnect around it)."""

    async def create_entry(self, body: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]: ...

    async def patch_entry(
        self, entry_id: str, patch: Mapping[str, Any], idempotency_key: str
    ) -> dict[str, Any]: ...

    async def get_table(self, table_id: str) -> dict[str, Any]: ...


class GuardedConnect:
    """The Connect client behind the breaker: every call asks it first and reports how it went."""

    def __init__(self, inner: Upstream, breaker: CircuitBreaker) -> None:
        self._inner = inner
        self.breaker = breaker

    async def create_entry(self, body: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
        return await self._call(lambda: self._inner.create_entry(body, idempotency_key))

    async def patch_entry(
        self, entry_id: str, patch: Mapping[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        return await self._call(lambda: self._inner.patch_entry(entry_id, patch, idempotency_key))

    async def get_table(self, table_id: str) -> dict[str, Any]:
        return await self._call(lambda: self._inner.get_table(table_id))

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        probe = await self.breaker.before()
        try:
            result = await call()
        except UpstreamError as exc:
            await self.breaker.after(failed=counts_as_failure(exc), probe=probe)
            raise
        await self.breaker.after(failed=False, probe=probe)
        return result
