"""Backoff schedule and Retry-After: RetryPolicy as tables, then Retry-After through the worker."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bridge.connect.classify import MAX_RETRY_AFTER_S
from bridge.queue import arq_adapter, deliveries, keys
from bridge.retry import RetryPolicy
from tests.pipeline import pipeline
from tests.servers import until

POLICY = RetryPolicy(base_s=1.0, max_delay_s=60.0, window_s=86_400.0, max_attempts=40, link_wait_s=300.0)


@pytest.mark.parametrize(
    ("attempt", "ceiling_s"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (40, 60.0), (10_000, 60.0)],
)
def test_ceiling_doubles_up_to_the_max_delay(attempt: int, ceiling_s: float) -> None:
    assert POLICY.ceiling_s(attempt) == ceiling_s


def test_schedule_with_a_seeded_rng_is_full_jitter_under_the_ceiling() -> None:
    # Seed 42: the draws of random.uniform(0, ceiling), attempt by attempt.
    expected = [
        (1, 0.639427),
        (2, 0.050022),
        (3, 1.100117),
        (4, 1.785686),
        (5, 11.783539),
        (6, 21.654384),
        (7, 53.530774),
        (8, 5.216330),
        (20, 25.315309),
    ]
    rng = random.Random(42)
    for attempt, delay_s in expected:
        assert POLICY.delay_s(attempt, None, rng) == pytest.approx(delay_s, abs=1e-6)


def test_jitter_spreads_and_stays_within_bounds() -> None:
    rng = random.Random(1)
    draws = [POLICY.delay_s(5, None, rng) for _ in range(2000)]
    assert all(0.0 <= d <= 16.0 for d in draws)
    assert min(draws) < 1.0
    assert max(draws) > 15.0


@pytest.mark.parametrize(
    ("attempt", "retry_after_s", "at_least_s", "at_most_s"),
    [
        (1, 5.0, 5.0, 5.0),  # Retry-After above the jittered pause: exactly Retry-After
        (7, 1.0, 1.0, 60.0),  # below it: the jittered pause, never less than Retry-After
        (1, 10_000_000.0, MAX_RETRY_AFTER_S, MAX_RETRY_AFTER_S),  # a far-future header is capped
        (1, 0.0, 0.0, 1.0),
        (1, -3.0, 0.0, 1.0),
    ],
)
def test_retry_after_is_a_floor_and_is_capped(
    attempt: int, retry_after_s: float, at_least_s: float, at_most_s: float
) -> None:
    rng = random.Random(3)
    for _ in range(50):
        delay = POLICY.delay_s(attempt, retry_after_s, rng)
        assert at_least_s <= delay <= at_most_s


@pytest.mark.parametrize(
    ("attempts", "age_s", "link", "gives_up"),
    [
        (1, 0.0, False, False),
        (39, 0.0, False, False),
        (40, 0.0, False, True),  # max attempts reached
        (3, 86_399.0, False, True),  # the next try would land outside the 24 h window
        (3, 200.0, True, False),
        (3, 299.9, True, True),  # a patch waiting for its create has the shorter link window
    ],
)
def test_next_delay_gives_up_on_attempts_or_window(
    attempts: int, age_s: float, link: bool, gives_up: bool
) -> None:
    delay = POLICY.next_delay_s(attempts, age_s, None, random.Random(0), waiting_for_link=link)
    assert (delay is None) is gives_up


async def test_a_429_retry_after_is_honoured_by_the_worker(redis_url: str, tmp_path: Path) -> None:
    # The backoff alone would retry within 0.2 s; the upstream asks for 2 s.
    async with pipeline(redis_url, tmp_path / "mappings") as pipe:
        await pipe.set_faults(rate_limit_rate=1.0, retry_after_s=2)
        response = await pipe.send_signed({"data": {"email": "ra@example.com", "first_name": "Ra"}})
        delivery_id = response.json()["delivery_id"]

        async def first_attempt() -> deliveries.DeliveryRecord | None:
            record = await deliveries.load(pipe.redis, delivery_id)
            return record if record is not None and record.history else None

        record = await until(first_attempt)
        failed_at = record.history[0].at
        assert record.history[0].status == 429
        due_ms = await pipe.redis.zscore(arq_adapter.QUEUE_KEY, delivery_id)
        assert due_ms is not None
        assert due_ms / 1000 >= failed_at + 2.0 - 0.05
        await pipe.set_faults()
        await pipe.wait_status(delivery_id, "delivered", timeout_s=10)
        assert time.time() >= failed_at + 2.0
        done = await deliveries.load(pipe.redis, delivery_id)
        assert done is not None
        assert done.attempts == 1
        assert len(await pipe.entries()) == 1


def test_the_retry_window_runs_from_the_last_replay_less_the_time_held() -> None:
    def record(**fields: float) -> deliveries.DeliveryRecord:
        base = {"id": "d", "mapping": "m", "provider": "p", "event_id": "e", "status": "retrying"}
        return deliveries.DeliveryRecord.model_validate({**base, "received_at": 100.0, **fields})

    assert record().retry_age_s(150.0) == 50.0
    assert record(replayed_at=140.0).retry_age_s(150.0) == 10.0  # a replay: a whole window again
    assert record(held_s=30.0).retry_age_s(150.0) == 20.0  # put back by an open breaker: not counted
    assert record(replayed_at=140.0, held_s=30.0).retry_age_s(150.0) == 0.0


async def test_time_held_is_counted_on_the_delivery_and_never_revives_an_expired_one(
    redis_client: Redis,
) -> None:
    await redis_client.hset(keys.delivery("held"), mapping={"mapping": "m", "status": "queued"})
    await redis_client.expire(keys.delivery("held"), 60)
    await deliveries.hold(redis_client, "held", 2.5)
    await deliveries.hold(redis_client, "held", 1.0)
    assert float(await redis_client.hget(keys.delivery("held"), "held_s")) == 3.5
    assert await redis_client.ttl(keys.delivery("held")) > 0
    await deliveries.hold(redis_client, "expired", 2.5)
    assert not await redis_client.exists(keys.delivery("expired"))
