"""The shared upstream circuit breaker: its state machine on a real Valkey (clock injected), then
a whole pipeline pausing on a failing upstream and resuming on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bridge.errors import UpstreamError
from bridge.queue import circuit, deliveries, keys
from bridge.queue.circuit import CircuitBreaker, CircuitConfig, CircuitOpen, GuardedConnect
from tests.pipeline import Pipeline, pipeline
from tests.servers import until

CONFIG = CircuitConfig(
    window_s=10, min_calls=20, failure_ratio=0.5, open_s=5.0, max_open_s=12.0, probe_lease_s=3.0
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def breaker(redis: Redis, clock: Clock, changes: list[bool] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        redis, CONFIG, clock=clock, on_change=changes.append if changes is not None else None
    )


async def calls(b: CircuitBreaker, ok: int, failed: int) -> None:
    for _ in range(ok):
        await b.after(failed=False, probe=False)
    for _ in range(failed):
        await b.after(failed=True, probe=False)


async def test_stays_closed_below_min_calls_or_below_the_ratio(redis_client: Redis) -> None:
    clock = Clock()
    b = breaker(redis_client, clock)
    await calls(b, 0, 19)  # all failed, but fewer than min_calls
    assert await circuit.read_state(redis_client) == "closed"
    await redis_client.delete(keys.CIRCUIT)
    await calls(b, 11, 9)  # 20 calls, 45 % failed
    assert await circuit.read_state(redis_client) == "closed"
    assert await b.before() is False


async def test_opens_at_the_ratio_and_old_failures_fall_out_of_the_window(redis_client: Redis) -> None:
    clock = Clock()
    b = breaker(redis_client, clock)
    await calls(b, 10, 9)
    clock.now += 11  # those 19 calls are now outside the 10 s window
    await calls(b, 1, 1)
    assert await circuit.read_state(redis_client) == "closed"
    await calls(b, 9, 9)  # 20 calls in the window, 10 failed: 50 %
    assert await circuit.read_state(redis_client) == "open"


async def test_open_defers_then_lets_one_probe_through(redis_client: Redis) -> None:
    clock = Clock()
    changes: list[bool] = []
    first, second = breaker(redis_client, clock, changes), breaker(redis_client, clock)  # two processes
    await calls(first, 0, 20)
    assert changes == [True]
    with pytest.raises(CircuitOpen) as waiting:
        await second.before()
    assert waiting.value.defer_s == pytest.approx(5.0, abs=0.01)
    clock.now += 5.0
    probes = await asyncio.gather(first.before(), second.before(), return_exceptions=True)
    assert sorted(type(p).__name__ for p in probes) == ["CircuitOpen", "bool"]
    blocked = next(p for p in probes if isinstance(p, CircuitOpen))
    assert blocked.defer_s <= CONFIG.probe_lease_s  # someone else's probe: look again when it is done
    # A late success of a call that started before the breaker opened does not close it.
    await second.after(failed=False, probe=False)
    assert await circuit.read_state(redis_client) == "open"


async def test_failed_probe_reopens_for_longer_and_a_good_probe_closes(redis_client: Redis) -> None:
    clock = Clock()
    changes: list[bool] = []
    b = breaker(redis_client, clock, changes)
    await calls(b, 0, 20)
    clock.now += 5.0
    assert await b.before() is True
    assert await b.after(failed=True, probe=True) == "open"
    clock.now += 5.0
    with pytest.raises(CircuitOpen) as waiting:
        await b.before()
    assert waiting.value.defer_s == pytest.approx(5.0, abs=0.01)  # 10 s this time
    clock.now += 5.0
    assert await b.before() is True
    await b.after(failed=True, probe=True)
    clock.now += 12.0  # capped at max_open_s, not 20 s
    assert await b.before() is True
    assert await b.after(failed=False, probe=True) == "closed"
    assert await circuit.read_state(redis_client) == "closed"
    assert changes == [True, False]
    await calls(b, 0, 19)  # the window started empty again
    assert await circuit.read_state(redis_client) == "closed"


async def test_a_probe_lease_lapses_when_its_worker_died(redis_client: Redis) -> None:
    clock = Clock()
    b = breaker(redis_client, clock)
    await calls(b, 0, 20)
    clock.now += 5.0
    assert await b.before() is True  # ...and this worker never reports back
    with pytest.raises(CircuitOpen):
        await b.before()
    clock.now += CONFIG.probe_lease_s
    assert await b.before() is True


class FlakyUpstream:
    """An upstream double: raises the queued errors in turn, then answers."""

    def __init__(self, errors: list[UpstreamError]) -> None:
        self.errors = errors
        self.calls = 0

    async def create_entry(self, body: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"id": "e1"}

    async def patch_entry(
        self, entry_id: str, patch: Mapping[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        return await self.create_entry(patch, idempotency_key)

    async def get_table(self, table_id: str) -> dict[str, Any]:
        return await self.create_entry({}, "")


@pytest.mark.parametrize(
    ("error", "opens"),
    [
        (UpstreamError("down", retryable=True), True),  # no answer
        (UpstreamError("x", retryable=True, status=503), True),
        (UpstreamError("x", retryable=True, status=408), True),
        (UpstreamError("x", retryable=True, status=401), True),  # our key refused: every call is
        (UpstreamError("x", retryable=True, status=429, retry_after_s=1), False),  # pacing, not down
        (UpstreamError("x", retryable=False, status=400), False),  # up, and refusing one request
    ],
)
async def test_what_counts_as_the_upstream_being_down(
    redis_client: Redis, error: UpstreamError, opens: bool
) -> None:
    upstream = FlakyUpstream([error] * 20)
    guarded = GuardedConnect(upstream, breaker(redis_client, Clock()))
    for _ in range(20):
        with pytest.raises(UpstreamError):
            await guarded.create_entry({}, "k")
    assert (await circuit.read_state(redis_client) == "open") is opens
    if opens:
        with pytest.raises(CircuitOpen):
            await guarded.create_entry({}, "k")
        assert upstream.calls == 20  # the 21st call never left


async def send_contacts(pipe: Pipeline, prefix: str, count: int) -> list[str]:
    """Send `count` contacts (`{prefix}{n}@example.com`); their delivery ids."""
    ids = []
    for n in range(count):
        response = await pipe.send_signed({"data": {"email": f"{prefix}{n}@example.com", "first_name": "C"}})
        ids.append(response.json()["delivery_id"])
    return ids


async def one_lead_each(pipe: Pipeline, prefix: str, count: int) -> None:
    """Every contact `send_contacts` sent is one lead, created once."""
    entries = await pipe.entries()
    assert sorted(e["data"]["email"] for e in entries) == sorted(
        f"{prefix}{n}@example.com" for n in range(count)
    )
    assert [e["type"] for e in await pipe.events()].count("table.entry.added") == count


def _quick_breaker(
    redis_url: str, tmp_path: Path, *, min_calls: int
) -> AbstractAsyncContextManager[Pipeline]:
    """A pipeline whose breaker opens after `min_calls` failed calls and probes after 0.3 s, then
    0.6 s."""
    return pipeline(
        redis_url,
        tmp_path / "mappings",
        BRIDGE_CIRCUIT_MIN_CALLS=min_calls,
        BRIDGE_CIRCUIT_OPEN_S=0.3,
        BRIDGE_CIRCUIT_MAX_OPEN_S=0.6,
    )


async def test_pipeline_pauses_on_a_down_upstream_and_resumes_by_itself(
    redis_url: str, tmp_path: Path
) -> None:
    async with _quick_breaker(redis_url, tmp_path, min_calls=5) as pipe:
        metrics = pipe.runtime.metrics

        def failed_calls() -> float:
            value = metrics.registry.get_sample_value(
                "leadbridge_upstream_request_seconds_count", {"method": "POST", "status": "500"}
            )
            return value or 0.0

        async def total_attempts(ids: list[str]) -> int:
            records = [await deliveries.load(pipe.redis, i) for i in ids]
            return sum(r.attempts for r in records if r is not None)

        await pipe.set_faults(error_rate=1.0)
        ids = await send_contacts(pipe, "c", 6)

        await until(lambda: metrics.registry.get_sample_value("leadbridge_circuit_open") == 1, timeout_s=10)
        assert await circuit.read_state(pipe.redis) == "open"
        # Each failed call is recorded as an attempt a moment after it is counted: take both
        # figures when they agree, so that no call made before this point is counted as an
        # attempt after it.
        settled: list[float] = []

        async def calls_and_attempts_agree() -> bool:
            attempts = await total_attempts(ids)
            settled[:] = [failed_calls(), attempts]
            return settled[0] == settled[1]

        await until(calls_and_attempts_agree, timeout_s=10)
        calls_at_open, attempts_at_open = settled

        async def two_probes_failed() -> bool:
            return (
                await pipe.redis.hget(keys.CIRCUIT, "open_ms") == b"600"
                and failed_calls() >= calls_at_open + 2
            )

        await until(two_probes_failed, timeout_s=10)
        # While open only probes reach the upstream (≥ 0.9 s here; backoff alone would have sent
        # dozens), and only they count as attempts: no lead burns its retry budget.
        assert failed_calls() - calls_at_open <= 6 + 3
        assert await total_attempts(ids) - attempts_at_open <= failed_calls() - calls_at_open

        await pipe.set_faults()
        for delivery_id in ids:
            await pipe.wait_status(delivery_id, "delivered", timeout_s=15)
        assert await circuit.read_state(pipe.redis) == "closed"
        assert metrics.registry.get_sample_value("leadbridge_circuit_open") == 0
        await one_lead_each(pipe, "c", 6)


async def test_a_refused_api_key_holds_deliveries_until_it_is_put_right(
    redis_url: str, tmp_path: Path
) -> None:
    """A revoked or rotated CONNECT_API_KEY: the upstream answers every call 401. Each delivery
    used to go straight to the dead-letter queue, to be replayed by hand once the key was
    fixed; now the breaker opens and they wait, then go through on their own, each once."""
    async with _quick_breaker(redis_url, tmp_path, min_calls=3) as pipe:
        key = pipe.sandbox._api_key
        pipe.sandbox._api_key = b"rotated-upstream"  # the key the worker sends is refused now
        ids = await send_contacts(pipe, "k", 4)
        metrics = pipe.runtime.metrics
        await until(lambda: metrics.registry.get_sample_value("leadbridge_circuit_open") == 1, timeout_s=10)
        assert [await pipe.delivery_status(i) for i in ids].count("dead") == 0
        assert await deliveries.dlq_ids(pipe.redis) == []
        assert await pipe.entries() == []

        pipe.sandbox._api_key = key  # put right (in production: the Secret, then a restart)
        for delivery_id in ids:
            await pipe.wait_status(delivery_id, "delivered", timeout_s=15)
        await one_lead_each(pipe, "k", 4)


async def test_successes_while_closed_are_recorded_in_batches_and_all_counted(redis_client: Redis) -> None:
    clock = Clock()
    b = breaker(redis_client, clock)
    assert await b.before() is False  # closed: cached for a moment
    for _ in range(50):
        assert await b.after(failed=False, probe=False) == "closed"

    async def recorded(prefix: str) -> int:
        raw = await redis_client.hgetall(keys.CIRCUIT)
        return sum(int(v) for k, v in raw.items() if k.decode().startswith(prefix))

    assert await recorded("o:") < 50  # not one Redis call per success
    await b.after(failed=True, probe=False)  # a failure carries the successes not yet recorded
    assert (await recorded("o:"), await recorded("f:")) == (50, 1)


async def test_a_delivery_held_by_an_open_breaker_is_dead_lettered_before_its_record_expires(
    redis_url: str, tmp_path: Path
) -> None:
    # Time put back by an open breaker does not use up the retry window, so a long enough
    # outage could keep a delivery going past BRIDGE_RETENTION_S, when its record (the lead)
    # expires. It is dead-lettered just before, where it can still be replayed.
    async with pipeline(
        redis_url,
        tmp_path / "mappings",
        BRIDGE_RETENTION_S=4,
        BRIDGE_RETRY_WINDOW_S=3,
        BRIDGE_CIRCUIT_MIN_CALLS=2,
        BRIDGE_CIRCUIT_OPEN_S=0.3,
        BRIDGE_CIRCUIT_MAX_OPEN_S=0.3,
    ) as pipe:
        await pipe.set_faults(error_rate=1.0)
        ids = []
        for n in range(3):
            response = await pipe.send_signed({"data": {"email": f"h{n}@example.com", "first_name": "H"}})
            ids.append(response.json()["delivery_id"])
        for delivery_id in ids:
            assert await pipe.wait_status(delivery_id, "dead", timeout_s=10) == "dead"
        records = [await deliveries.load(pipe.redis, i) for i in ids]
        assert all(r is not None for r in records)
        held = [r for r in records if r is not None and r.held_s > 0]
        assert held, "no delivery was put back by the open breaker"
        assert sorted(await deliveries.dlq_ids(pipe.redis)) == sorted(ids)
