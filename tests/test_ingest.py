"""The batched durable accept, on a real Valkey."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from redis.asyncio import Redis

from bridge.errors import QueueUnavailable
from bridge.queue import arq_adapter, ingest, keys, ordering
from bridge.queue.ingest import Accepter, Incoming
from tests.servers import until


def _incoming(event_id: str, mapping: str = "m") -> Incoming:
    return Incoming(mapping=mapping, provider="none", event_id=event_id, body=b'{"a":1}', headers={})


async def test_accept_stores_delivery_job_and_dedupe_record(redis_client: Redis) -> None:
    accepter = Accepter(redis_client, dedupe_window_s=60, retention_s=120)
    accepted = await accepter.accept(_incoming("e1"))
    assert not accepted.duplicate
    stored = await redis_client.hgetall(keys.delivery(accepted.delivery_id))
    assert stored[b"body"] == b'{"a":1}'
    assert stored[b"status"] == b"queued"
    assert await redis_client.zscore(arq_adapter.QUEUE_KEY, accepted.delivery_id) is not None
    assert not await redis_client.exists(arq_adapter.job_key(accepted.delivery_id))  # no arq record
    assert await redis_client.get(keys.seen("m", "e1")) == accepted.delivery_id.encode()
    assert 0 < await redis_client.ttl(keys.seen("m", "e1")) <= 60
    assert 60 < await redis_client.ttl(keys.delivery(accepted.delivery_id)) <= 120


async def test_duplicates_within_one_batch_and_across_mappings(redis_client: Redis) -> None:
    accepter = Accepter(redis_client, dedupe_window_s=60, retention_s=120)
    results = await asyncio.gather(
        *(accepter.accept(_incoming("same")) for _ in range(50)),
        accepter.accept(_incoming("same", mapping="other")),
    )
    firsts = [r for r in results[:50] if not r.duplicate]
    assert len(firsts) == 1
    assert {r.delivery_id for r in results[:50]} == {firsts[0].delivery_id}
    assert not results[50].duplicate  # the same event id under another mapping is another event
    assert await redis_client.zcard(arq_adapter.QUEUE_KEY) == 2


async def test_many_concurrent_accepts_are_all_stored(redis_client: Redis) -> None:
    accepter = Accepter(redis_client, dedupe_window_s=60, retention_s=120)
    results = await asyncio.gather(*(accepter.accept(_incoming(f"e{i}")) for i in range(1500)))
    assert len({r.delivery_id for r in results}) == 1500
    assert await redis_client.zcard(arq_adapter.QUEUE_KEY) == 1500


async def test_arrival_order_is_kept_across_batches_and_mappings(redis_client: Redis) -> None:
    """Each stored delivery takes the next `seq`; each mapping's unplanned line holds its own
    deliveries scored by seq; a duplicate takes none."""
    accepter = Accepter(redis_client, dedupe_window_s=60, retention_s=120)
    events = [(f"e{i}", "ab"[i % 2]) for i in range(40)]
    first = await asyncio.gather(*(accepter.accept(_incoming(e, m)) for e, m in events))
    events += [(f"f{i}", "a") for i in range(10)]
    again = await asyncio.gather(
        accepter.accept(_incoming("e0", "a")), *(accepter.accept(_incoming(e, m)) for e, m in events[40:])
    )
    assert again[0].duplicate
    assert again[0].delivery_id == first[0].delivery_id
    ids = [r.delivery_id for r in (*first, *again[1:])]
    seqs = [int(await redis_client.hget(keys.delivery(i), "seq") or 0) for i in ids]
    assert sorted(seqs) == list(range(1, 51))
    assert int(await redis_client.get(keys.SEQ) or 0) == 50
    for mapping in "ab":
        line = await redis_client.zrange(ordering.unplanned_key(mapping), 0, -1, withscores=True)
        mine = [
            (i.encode(), float(s)) for i, s, (_, m) in zip(ids, seqs, events, strict=True) if m == mapping
        ]
        assert line == sorted(mine, key=lambda item: item[1])
        assert 60 < await redis_client.ttl(ordering.unplanned_key(mapping)) <= 120


async def test_unreachable_queue_is_queue_unavailable() -> None:
    dead = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
    accepter = Accepter(dead, dedupe_window_s=60, retention_s=120)
    with pytest.raises(QueueUnavailable):
        await accepter.accept(_incoming("e1"))
    await dead.aclose()


async def test_script_cache_loss_is_survived(redis_client: Redis) -> None:
    accepter = Accepter(redis_client, dedupe_window_s=60, retention_s=120)
    await accepter.accept(_incoming("before"))
    await redis_client.script_flush()
    accepted = await accepter.accept(_incoming("after"))
    assert not accepted.duplicate


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_accepts_one_after_another_are_never_left_waiting(
    redis_client: Redis, monkeypatch: pytest.MonkeyPatch, in_flight: int
) -> None:
    """A caller that arrives just as a flush loop ends must start or join one (with the loop
    count dropped by a done callback instead, the second of two sequential accepts hung)."""
    monkeypatch.setattr(ingest, "BATCHES_IN_FLIGHT", in_flight)
    accepter = Accepter(redis_client, dedupe_window_s=60, retention_s=120)
    async with asyncio.timeout(5):  # awaited directly: wait_for's extra task would hide a hang
        for i in range(20):
            await accepter.accept(_incoming(f"seq-{in_flight}-{i}"))
    concurrent = [accepter.accept(_incoming(f"par-{in_flight}-{i}")) for i in range(100)]
    assert len(await asyncio.wait_for(asyncio.gather(*concurrent), timeout=10)) == 100


async def test_too_few_replicas_is_queue_unavailable_and_the_retry_a_duplicate(redis_client: Redis) -> None:
    # No replica exists: WAIT answers 0 after its timeout, so nobody may be answered "stored".
    accepter = Accepter(
        redis_client, dedupe_window_s=60, retention_s=120, wait_replicas=1, wait_timeout_ms=20
    )
    with pytest.raises(QueueUnavailable):
        await accepter.accept(_incoming("replicated"))
    # It is on the primary, though: the provider's retry is answered as a duplicate of it.
    plain = Accepter(redis_client, dedupe_window_s=60, retention_s=120)
    assert (await plain.accept(_incoming("replicated"))).duplicate


async def test_a_stalled_server_is_queue_unavailable_within_the_timeout_then_recovers(redis_url: str) -> None:
    client = Redis.from_url(redis_url, socket_timeout=0.3)
    admin = Redis.from_url(redis_url)
    accepter = Accepter(client, dedupe_window_s=60, retention_s=120)
    try:
        await accepter.accept(_incoming("before"))  # connected, script loaded
        await admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")  # the script writes: held
        started = time.monotonic()
        with pytest.raises(QueueUnavailable):
            await accepter.accept(_incoming("during"))
        assert time.monotonic() - started < 2.5  # the timeout, not the end of the pause
        await admin.execute_command("CLIENT", "UNPAUSE")
        async with asyncio.timeout(10):
            accepted = await accepter.accept(_incoming("after"))  # on a new connection
        assert not accepted.duplicate
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await client.aclose()


async def test_a_dropped_connection_is_opened_again(redis_client: Redis) -> None:
    accepter = Accepter(redis_client, dedupe_window_s=60, retention_s=120)
    await accepter.accept(_incoming("first"))
    killed = await redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert int(killed) >= 1
    async with asyncio.timeout(10):
        with contextlib.suppress(QueueUnavailable):  # a batch may meet the closed connection once
            await accepter.accept(_incoming("second"))
        accepted = await accepter.accept(_incoming("third"))
    assert not accepted.duplicate
    assert await redis_client.exists(keys.delivery(accepted.delivery_id))


async def test_closing_the_client_closes_the_ingest_connection_without_waiting(redis_url: str) -> None:
    client = Redis.from_url(redis_url)  # no timeouts at all: a hang would be forever
    admin = Redis.from_url(redis_url)
    try:
        accepter = Accepter(client, dedupe_window_s=60, retention_s=120)
        await accepter.accept(_incoming("e1"))
        assert await _connected_clients(admin) == 2  # admin, and the batches'
        async with asyncio.timeout(5):
            await client.aclose()
        await until(lambda: _only_admin_connected(admin), timeout_s=5)
    finally:
        await admin.aclose()


async def _connected_clients(redis: Redis) -> int:
    return int((await redis.info("clients"))["connected_clients"])


async def _only_admin_connected(admin: Redis) -> bool:
    return await _connected_clients(admin) == 1


async def test_batches_after_a_lost_script_cache_are_stored_in_order(
    redis_client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "MAX_BATCH", 10)  # 25 deliveries: 3 batches, 2 sent at once
    accepter = Accepter(redis_client, dedupe_window_s=60, retention_s=120)
    await accepter.accept(_incoming("warm-up"))  # the connection open
    # As after a restart of the server. Each batch carries its script (EVAL): none is refused
    # with NOSCRIPT and sent again, so none can be stored after a later one.
    await redis_client.script_flush()
    results = await asyncio.gather(*(accepter.accept(_incoming(f"o{i}")) for i in range(25)))
    seqs = [int(await redis_client.hget(keys.delivery(r.delivery_id), "seq") or 0) for r in results]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 25
