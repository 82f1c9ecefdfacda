"""Availability: Redis going away under a running web app and worker (their own embedded Valkey,
stopped and started again), and jobs that outlive their time or lose Redis midway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.aio import cancel_and_wait
from bridge.queue import arq_adapter, deliveries, keys, wake
from bridge.queue.embedded import EmbeddedValkey
from bridge.queue.ingest import Accepter, Incoming
from tests.pipeline import pipeline, sign
from tests.servers import until


def _worker(deliver: Any, redis: Redis, **options: Any) -> Any:
    """A leadbridge arq worker running `deliver`, as `Runtime.start_worker` builds it."""
    return arq_adapter.build_worker(
        deliver=deliver,
        redis_pool=arq_adapter.wrap_pool(redis),
        on_startup=None,
        ctx={},
        job_timeout_s=5,
        **options,
    )


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "valkey-data").start()
    try:
        yield server
    finally:
        server.stop()


async def test_ingest_answers_503_while_redis_is_down_and_everything_carries_on(
    own_valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    async with pipeline(own_valkey.url, tmp_path / "mappings") as pipe:
        before = await pipe.send_signed({"data": {"email": "before@example.com", "first_name": "B"}})
        await pipe.wait_status(before.json()["delivery_id"], "delivered")

        own_valkey.stop()
        # the queue gauges keep their last values; leadbridge_queue_up says they are stale
        metrics = (await pipe.http.get(f"{pipe.url}/metrics")).text
        assert "leadbridge_queue_up 0.0" in metrics
        raw = orjson.dumps({"data": {"email": "during@example.com", "first_name": "D"}})
        headers = sign(raw, msg_id="msg_during_outage")
        refused = await pipe.post("contact", raw, headers)
        assert refused.status_code == 503
        assert refused.headers["retry-after"].isdigit()
        assert refused.json() == {
            "status": "error",
            "error": "queue unavailable; retry later",
        }
        assert (await pipe.http.get(f"{pipe.url}/readyz")).status_code == 503
        unavailable = pipe.runtime.metrics.registry.get_sample_value(
            "leadbridge_webhooks_total", {"mapping": "contact", "outcome": "unavailable"}
        )
        assert unavailable == 1

        own_valkey.start()  # same data dir: the AOF brings everything back; no web or worker restart
        assert not await pipe.redis.exists(keys.seen("contact", "msg_during_outage"))  # nothing half-written

        async def accepted() -> str | None:
            response = await pipe.post("contact", raw, headers)  # the provider's own retry
            return str(response.json()["delivery_id"]) if response.status_code == 202 else None

        delivery_id = await until(accepted, timeout_s=15, interval_s=0.1)
        await pipe.wait_status(delivery_id, "delivered", timeout_s=20)
        assert sorted(e["data"]["email"] for e in await pipe.entries()) == [
            "before@example.com",
            "during@example.com",
        ]
        assert (await pipe.http.get(f"{pipe.url}/readyz")).status_code == 200
        assert "leadbridge_queue_up 1.0" in (await pipe.http.get(f"{pipe.url}/metrics")).text


async def test_a_job_in_flight_when_redis_restarts_is_delivered_once(
    own_valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    async with pipeline(own_valkey.url, tmp_path / "mappings") as pipe:
        await pipe.set_faults(latency_ms=600)
        response = await pipe.send_signed({"data": {"email": "inflight@example.com", "first_name": "I"}})
        delivery_id = response.json()["delivery_id"]
        registry = pipe.runtime.metrics.registry
        await until(lambda: (registry.get_sample_value("leadbridge_worker_jobs_in_flight") or 0) >= 1)
        own_valkey.kill()  # kill -9 while the upstream call is under way
        own_valkey.start()
        await pipe.set_faults()
        await pipe.wait_status(delivery_id, "delivered", timeout_s=30)
        assert len(await pipe.entries()) == 1
        assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1


async def test_a_job_over_its_time_limit_is_retried_not_dropped(redis_url: str, tmp_path: Path) -> None:
    async with pipeline(redis_url, tmp_path / "mappings", BRIDGE_JOB_TIMEOUT_S=0.5) as pipe:
        await pipe.set_faults(latency_ms=900)  # every upstream call outlives the job's time
        response = await pipe.send_signed({"data": {"email": "slow@example.com", "first_name": "S"}})
        delivery_id = response.json()["delivery_id"]

        async def timed_out() -> deliveries.DeliveryRecord | None:
            record = await deliveries.load(pipe.redis, delivery_id)
            return record if record is not None and record.history else None

        record = await until(timed_out)
        assert record.history[0].error == "the delivery took longer than BRIDGE_JOB_TIMEOUT_S (0.5 s)"
        assert record.history[0].retryable
        assert await pipe.redis.zscore(arq_adapter.QUEUE_KEY, delivery_id) is not None  # still queued
        await pipe.set_faults()
        await pipe.wait_status(delivery_id, "delivered")
        assert len(await pipe.entries()) == 1


async def test_a_time_limit_that_strikes_after_the_delivery_finished_leaves_it_delivered(
    redis_url: str, tmp_path: Path
) -> None:
    """The last command's end script wrote "delivered" and finished the job; the limit then
    struck before the job returned. Before: the delivery was marked retrying with a timeout in
    its history, and its finished job queued again."""
    async with pipeline(redis_url, tmp_path / "mappings", BRIDGE_JOB_TIMEOUT_S=0.5) as pipe:
        deliverer = pipe.runtime.deliverer
        assert deliverer is not None
        apply_once = deliverer._apply_once
        stalled = asyncio.Event()

        async def stall_after_the_end(*args: Any, **kwargs: Any) -> bool:
            finished = await apply_once(*args, **kwargs)
            if finished and not stalled.is_set():
                stalled.set()
                await asyncio.Event().wait()  # until the job's time limit cancels it
            return finished

        outcomes: list[object] = []
        within_time = deliverer._deliver_within_time

        async def noted(*args: Any) -> str:
            try:
                outcome = await within_time(*args)
            except BaseException as exc:
                outcomes.append(exc)
                raise
            outcomes.append(outcome)
            return outcome

        deliverer._apply_once = stall_after_the_end  # type: ignore[method-assign]
        deliverer._deliver_within_time = noted  # type: ignore[method-assign]
        response = await pipe.send_signed({"data": {"email": "late@example.com", "first_name": "L"}})
        delivery_id = response.json()["delivery_id"]

        await until(lambda: bool(outcomes))
        assert stalled.is_set()
        assert outcomes == ["delivered"]
        record = await deliveries.load(pipe.redis, delivery_id)
        assert record is not None
        assert (record.status, record.attempts, record.history) == ("delivered", 0, [])
        assert await pipe.redis.zscore(arq_adapter.QUEUE_KEY, delivery_id) is None
        assert len(await pipe.entries()) == 1


async def test_an_unexpected_error_dead_letters_instead_of_losing_the_delivery(
    redis_url: str, tmp_path: Path
) -> None:
    async with pipeline(redis_url, tmp_path / "mappings") as pipe:

        class Boom:
            def get(self, name: str) -> object:
                raise ZeroDivisionError

        deliverer = pipe.runtime.deliverer
        assert deliverer is not None
        real = deliverer.mappings
        deliverer.mappings = Boom()
        try:
            response = await pipe.send_signed({"data": {"email": "bug@example.com", "first_name": "X"}})
            delivery_id = response.json()["delivery_id"]
            await pipe.wait_status(delivery_id, "dead")
        finally:
            deliverer.mappings = real
        record = await deliveries.load(pipe.redis, delivery_id)
        assert record is not None
        assert record.reason == "internal error (ZeroDivisionError); see the worker log"
        assert await deliveries.dlq_ids(pipe.redis) == [delivery_id]


async def test_a_redis_error_while_claiming_a_job_gives_its_slot_back(tmp_path: Path) -> None:
    async def deliver(ctx: dict[str, object], delivery_id: str) -> str:
        return "delivered"

    dead = Redis.from_url(f"unix://{tmp_path}/nothing-here.sock")
    worker = _worker(deliver, dead, max_jobs=2)
    try:
        for _ in range(5):  # five Redis blips in a row
            with pytest.raises(RedisError):
                await worker.start_jobs([b"some-job"])
        assert worker.job_counter == 0
        for _ in range(3):  # max_jobs + 1 permits: every one of them is still there
            await asyncio.wait_for(worker.sem.acquire(), timeout=1)
    finally:
        await dead.aclose()


async def test_jobs_are_claimed_in_batches_up_to_the_free_slots(redis_client: Redis) -> None:
    release = asyncio.Event()
    ran: list[str] = []

    async def deliver(ctx: dict[str, object], delivery_id: str) -> str:
        ran.append(delivery_id)
        await release.wait()
        return "delivered"

    now_ms = int(time.time() * 1000)
    ids = [f"batch-{i}" for i in range(6)]
    await redis_client.zadd(arq_adapter.QUEUE_KEY, {i: now_ms - 1000 for i in ids})
    await redis_client.zadd(arq_adapter.QUEUE_KEY, {"batch-later": now_ms + 60_000})  # not due
    await redis_client.set(arq_adapter.in_progress_key("batch-0"), b"1")  # runs elsewhere
    worker = _worker(deliver, redis_client, max_jobs=3, job_lease_s=7)
    try:
        candidates = [i.encode() for i in [*ids, "batch-later"]]
        await asyncio.wait_for(worker.start_jobs(candidates), timeout=5)  # full: back to polling
        await until(lambda: len(ran) == 3, timeout_s=5)
        assert sorted(ran) == ["batch-1", "batch-2", "batch-3"]  # not the running one, 3 slots
        assert worker.job_counter == 3
        ttl = await redis_client.pttl(arq_adapter.in_progress_key("batch-1"))
        assert 5_000 < ttl <= 7_000  # the claim is a lease of job_lease_s
        release.set()
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), timeout=5)
        await asyncio.wait_for(worker.start_jobs(candidates), timeout=5)  # the next poll
        await until(lambda: len(ran) == 5, timeout_s=5)
        assert sorted(ran[3:]) == ["batch-4", "batch-5"]  # the job that is not due never ran
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), timeout=5)
        assert worker.job_counter == 0
    finally:
        release.set()
        for task in worker.tasks.values():
            task.cancel()
        await redis_client.delete(*(arq_adapter.in_progress_key(i) for i in ids))
        await redis_client.zrem(arq_adapter.QUEUE_KEY, *ids, "batch-later")


async def test_claims_are_renewed_for_running_jobs_only(redis_client: Redis) -> None:
    """A job that ended here but is still in `worker.tasks` (the poll loop sweeps them out, and a
    saturated worker waits in `start_jobs` meanwhile) may have been given back and claimed by
    another worker: renewing that claim would keep it alive after that worker died."""
    release = asyncio.Event()

    async def deliver(ctx: dict[str, object], delivery_id: str) -> str:
        await release.wait()
        return "delivered"

    worker = _worker(deliver, redis_client, max_jobs=2, job_lease_s=0.6)
    ended = asyncio.get_running_loop().create_future()
    ended.set_result(None)
    worker.tasks["renew-ended"] = ended  # ended here, not swept out yet
    worker.tasks["renew-running"] = asyncio.create_task(deliver({}, "renew-running"))
    claims = [arq_adapter.in_progress_key(i) for i in ("renew-ended", "renew-running")]
    for claim in claims:
        await redis_client.set(claim, b"1", px=600)  # the ended one: another worker's claim now

    async def lapsed() -> bool:
        return not await redis_client.exists(claims[0])

    renewing = asyncio.create_task(arq_adapter._renew_claims(worker))
    try:
        await until(lapsed, timeout_s=5)
        assert await redis_client.pttl(claims[1]) > 150  # renewed (every 200 ms), past its first 600 ms
    finally:
        release.set()
        await cancel_and_wait(renewing)
        await asyncio.gather(*worker.tasks.values())
        await redis_client.delete(*claims)


async def test_a_claim_reads_the_hashes_its_job_starts_with(redis_client: Redis) -> None:
    """With `preload`, the claim reads prefix + job id for each prefix (empty when missing) in
    its own round trip, and the job function receives them."""
    got: dict[str, object] = {}

    async def deliver(ctx: dict[str, object], delivery_id: str, preloaded: object = None) -> str:
        got[delivery_id] = preloaded
        return "delivered"

    now_ms = int(time.time() * 1000)
    await redis_client.zadd(arq_adapter.QUEUE_KEY, {"pre-1": now_ms - 1000, "pre-2": now_ms - 1000})
    await redis_client.hset("pre:a:pre-1", mapping={"mapping": "m", "seq": "7"})
    await redis_client.hset("pre:b:pre-1", mapping={"0": "entry-1"})
    worker = _worker(deliver, redis_client, max_jobs=4, preload=("pre:a:", "pre:b:"))
    try:
        await asyncio.wait_for(worker.start_jobs([b"pre-1", b"pre-2"]), timeout=5)
        await until(lambda: len(got) == 2, timeout_s=5)
        assert got["pre-1"] == [{b"mapping": b"m", b"seq": b"7"}, {b"0": b"entry-1"}]
        assert got["pre-2"] == [{}, {}]
    finally:
        for task in worker.tasks.values():
            task.cancel()
        await redis_client.delete("pre:a:pre-1", "pre:b:pre-1")
        await redis_client.zrem(arq_adapter.QUEUE_KEY, "pre-1", "pre-2")


async def test_a_job_ends_done_deferred_or_back_in_the_queue(redis_client: Redis) -> None:
    outcomes: dict[str, BaseException | None] = {
        "rj-done": None,
        "rj-retry": arq_adapter.Retry(defer=30),
        "rj-bug": ZeroDivisionError(),
    }

    async def deliver(ctx: dict[str, object], delivery_id: str) -> str:
        raised = outcomes[delivery_id]
        if raised is not None:
            raise raised
        return "delivered"

    worker = _worker(deliver, redis_client, max_jobs=4)
    now_ms = int(time.time() * 1000)
    for job_id in outcomes:
        await redis_client.zadd(arq_adapter.QUEUE_KEY, {job_id: now_ms})
        await redis_client.set(arq_adapter.job_key(job_id), b"left by an older version")
        await redis_client.set(arq_adapter.in_progress_key(job_id), b"1")
        await worker.run_job(job_id, now_ms)
        assert not await redis_client.exists(arq_adapter.in_progress_key(job_id))
    try:
        # Done: out of the queue, and a job record an older version wrote is gone too.
        assert await redis_client.zscore(arq_adapter.QUEUE_KEY, "rj-done") is None
        assert not await redis_client.exists(arq_adapter.job_key("rj-done"))
        # Retry(defer=30): back in about 30 s; a bug that escaped the Deliverer: in about 60 s.
        for job_id, defer_s in (("rj-retry", 30), ("rj-bug", 60)):
            score = await redis_client.zscore(arq_adapter.QUEUE_KEY, job_id)
            assert score is not None
            assert defer_s - 2 < (score - now_ms) / 1000 <= defer_s + 2
            assert await redis_client.exists(arq_adapter.job_key(job_id))
    finally:
        await redis_client.zrem(arq_adapter.QUEUE_KEY, *outcomes)
        await redis_client.delete(*(arq_adapter.job_key(j) for j in outcomes))


async def test_a_cancelled_job_stays_queued_and_unclaimed(redis_client: Redis) -> None:
    started = asyncio.Event()

    async def deliver(ctx: dict[str, object], delivery_id: str) -> str:
        started.set()
        await asyncio.Event().wait()  # until cancelled
        return "never"

    worker = _worker(deliver, redis_client, max_jobs=1)
    now_ms = int(time.time() * 1000)
    await redis_client.zadd(arq_adapter.QUEUE_KEY, {"rj-cancel": now_ms})
    await redis_client.set(arq_adapter.in_progress_key("rj-cancel"), b"1")
    try:
        running = asyncio.create_task(worker.run_job("rj-cancel", now_ms))
        await asyncio.wait_for(started.wait(), timeout=5)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert await redis_client.zscore(arq_adapter.QUEUE_KEY, "rj-cancel") == now_ms
        assert not await redis_client.exists(arq_adapter.in_progress_key("rj-cancel"))
    finally:
        await redis_client.zrem(arq_adapter.QUEUE_KEY, "rj-cancel")


async def test_an_idle_worker_is_woken_by_a_new_delivery_not_its_next_poll(redis_client: Redis) -> None:
    picked: list[str] = []

    async def deliver(ctx: dict[str, object], delivery_id: str) -> str:
        picked.append(delivery_id)
        return "delivered"

    # left alone, an idle worker would look again in a minute
    worker = _worker(deliver, redis_client, max_jobs=4, poll_delay_s=60.0)
    worker.wake = asyncio.Event()
    listening = asyncio.create_task(wake.wake_on_publish(redis_client, worker.wake))
    running = asyncio.create_task(arq_adapter.run(worker))
    try:

        async def subscribed() -> bool:
            return bool((await redis_client.pubsub_numsub(keys.WAKE))[0][1])

        await until(subscribed, timeout_s=5)
        accepter = Accepter(redis_client, dedupe_window_s=60, retention_s=60)
        for n in range(2):  # the first is found by the first poll; the second arrives while idle
            accepted = await accepter.accept(
                Incoming(mapping="m", provider="hmac", event_id=f"wake-{n}", body=b"{}", headers={})
            )
            await until(lambda: accepted.delivery_id in picked, timeout_s=5)  # noqa: B023
    finally:
        for task in (running, listening):
            await cancel_and_wait(task)


@pytest.mark.parametrize(("deaths", "outcome"), [(4, "delivered"), (5, "dead")])
async def test_a_delivery_whose_worker_keeps_dying_is_dead_lettered(
    redis_url: str, tmp_path: Path, deaths: int, outcome: str
) -> None:
    """Runs of its job that never ended (the worker SIGKILLed, out of memory) are counted by the
    claim; the count goes back to 0 when a run ends any other way. After 5 in a row the delivery
    is dead-lettered with that reason, instead of being rerun until its record expires."""
    async with pipeline(redis_url, tmp_path / "mappings", worker=False) as pipe:
        sent = await pipe.send_signed({"data": {"email": f"d{deaths}@example.com", "first_name": "D"}})
        delivery_id = sent.json()["delivery_id"]

        async def never(ctx: dict[str, object], delivery_id: str) -> str:
            raise AssertionError("only claimed here")

        counting = {"preload": deliveries.PRELOAD, "count_runs": deliveries.UNFINISHED}
        dying = _worker(never, pipe.redis, max_jobs=1, **counting)
        for _ in range(deaths):  # claimed, then its worker dies: the lease lapses, nothing ended
            assert (await dying._claim([delivery_id]))[0] is not None
            await pipe.redis.delete(arq_adapter.in_progress_key(delivery_id))
        await pipe.runtime.start_worker()
        assert await pipe.wait_status(delivery_id, "delivered", "dead") == outcome
        record = await deliveries.load(pipe.redis, delivery_id)
        assert record is not None
        if outcome == "dead":
            assert record.reason == (
                "its worker died 5 times in a row while delivering it (out of memory? killed?)"
            )
            assert await pipe.entries() == []
        else:
            assert len(await pipe.entries()) == 1


async def test_a_run_that_ends_short_of_done_clears_the_count_of_dead_runs(
    redis_url: str, tmp_path: Path
) -> None:
    async with pipeline(redis_url, tmp_path / "mappings") as pipe:
        await pipe.set_faults(error_rate=1.0)  # every create answered 500: retried, again and again
        sent = await pipe.send_signed({"data": {"email": "r@example.com", "first_name": "R"}})
        delivery_id = sent.json()["delivery_id"]

        async def retried_thrice() -> bool:
            record = await deliveries.load(pipe.redis, delivery_id)
            return record is not None and record.attempts >= 3

        await until(retried_thrice)
        counts = await pipe.redis.hget(keys.delivery(delivery_id), deliveries.UNFINISHED)
        assert counts in (b"0", b"1")  # between runs, or in one: never the runs added up
        await pipe.set_faults()
        assert await pipe.wait_status(delivery_id, "delivered") == "delivered"
