"""Per-record order: one at a time and in arrival order across worker processes, stale `order`
skipped, a patch waiting for a create that arrives after it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from bridge.aio import cancel_and_wait
from bridge.queue import arq_adapter, keys
from bridge.queue.ingest import Accepter, Incoming
from bridge.queue.ordering import Ordering, OrderWait, Pin, Registration, Step, pending_key, unplanned_key
from bridge.runtime import Runtime
from bridge.sandbox import DEMO_API_KEY, DEMO_TABLE_ID
from tests import pipeline as pipelines
from tests.pipeline import SECRET, pipeline, sign
from tests.servers import until

STAGES = ["New", "Contacted", "Qualified", "Won", "Lost"]
PINS = [keys.sent(f"idem-{step}") for step in ("c", "c2", "p")]  # a command's pinned bodies

CRM = f"""\
version: 1
name: crm
provider: standard-webhooks
verify: {{secret: "${{CONTACT_SECRET}}"}}
table: {DEMO_TABLE_ID}
action: upsert
key: data.email
lead:
  state: data.stage
  data:
    email: data.email
    step: data.step
"""

ORDERED = f"""\
version: 1
name: ordered
provider: standard-webhooks
verify: {{secret: "${{CONTACT_SECRET}}"}}
table: {DEMO_TABLE_ID}
action: upsert
key: data.email
order: data.updated_at
lead:
  data:
    email: data.email
    name: data.name
"""

FORM = f"""\
version: 1
name: form
provider: standard-webhooks
verify: {{secret: "${{CONTACT_SECRET}}"}}
table: {DEMO_TABLE_ID}
action: upsert
key: data.email
link: people
lead:
  data:
    email: data.email
    name: data.name
"""

CRM_PATCH = f"""\
version: 1
name: crm-patch
provider: standard-webhooks
verify: {{secret: "${{CONTACT_SECRET}}"}}
table: {DEMO_TABLE_ID}
action: patch
key: data.email
link: people
lead:
  data:
    phone: data.phone
"""


# -- the bookkeeping, on its own ------------------------------------------------------------------


async def test_accept_puts_each_delivery_in_line_in_arrival_order(redis_client: Redis) -> None:
    accepter = Accepter(redis_client, dedupe_window_s=60, retention_s=120)
    incoming = [
        Incoming(mapping="m", provider="none", event_id=f"e{n}", body=b"{}", headers={}) for n in range(300)
    ]
    ids = [r.delivery_id for r in await asyncio.gather(*(accepter.accept(i) for i in incoming))]
    seqs = {i: int(await redis_client.hget(keys.delivery(i), "seq") or 0) for i in ids}
    # Ids sort like their arrival numbers, so jobs enqueued in the same millisecond (same queue
    # score) are picked up in arrival order too.
    assert sorted(ids) == sorted(ids, key=seqs.__getitem__)
    line = await redis_client.zrange(unplanned_key("m"), 0, -1, withscores=True)
    assert [(m.decode(), int(score)) for m, score in line] == sorted(seqs.items(), key=lambda x: x[1])


async def _queued(redis: Redis, delivery_id: str) -> None:
    """What ingest leaves for a delivery in arq's queue (a blocker is alive while it is queued)."""
    await redis.zadd(arq_adapter.QUEUE_KEY, {delivery_id: time.time() * 1000})


async def _take_turn(ordering: Ordering, delivery_id: str, seq: int, key: str = "k") -> None:
    async with ordering.turn(Step(delivery_id, seq, "link", key, "0"), {"m"}) as held:
        assert not held.done


async def test_a_later_delivery_waits_for_an_earlier_one_to_be_planned_then_applied(
    redis_client: Redis,
) -> None:
    ordering = Ordering(redis_client, retention_s=60, lease_s=5, wait_s=0.05)
    for seq, delivery_id in ((1, "a"), (2, "b")):
        await _queued(redis_client, delivery_id)
        await redis_client.zadd(unplanned_key("m"), {delivery_id: seq})
    # b was picked up first: planned and in line for the record, but a (earlier) is not planned.
    await ordering.register("b", "m", 2, [("link", "k")])
    with pytest.raises(OrderWait):
        await _take_turn(ordering, "b", 2)
    await ordering.register("a", "m", 1, [("link", "k")])
    await _take_turn(ordering, "a", 1)  # a goes first...
    with pytest.raises(OrderWait):
        await _take_turn(ordering, "b", 2)  # ...while b waits for it
    await ordering.release("a", "link", "k")
    await _take_turn(ordering, "b", 2)
    # Another record is never held up by this one.
    await ordering.register("c", "m", 3, [("link", "other")])
    await _take_turn(ordering, "c", 3, "other")


async def test_a_blocker_whose_job_is_gone_is_dropped(redis_client: Redis) -> None:
    ordering = Ordering(redis_client, retention_s=60, lease_s=5, wait_s=0.05)
    await redis_client.zadd(unplanned_key("m"), {"lost": 1})  # no arq job: it will never run
    await _queued(redis_client, "b")
    await ordering.register("b", "m", 2, [("link", "k")])
    await redis_client.zadd(pending_key("link", "k"), {"crashed": 0})
    await _take_turn(ordering, "b", 2)
    assert await redis_client.zcard(unplanned_key("m")) == 0
    assert await redis_client.zrange(pending_key("link", "k"), 0, -1) == [b"b"]


async def test_forget_and_a_new_plan_leave_the_sets(redis_client: Redis) -> None:
    ordering = Ordering(redis_client, retention_s=60, lease_s=5)
    await redis_client.hset(keys.delivery("d"), "mapping", "m")
    await ordering.register("d", "m", 1, [("l", "k1"), ("l", "k2")])
    joined = await ordering.register("d", "m", 1, [("l", "k2")])  # the mapping changed between runs
    assert joined == [pending_key("l", "k2")]
    assert await redis_client.zcard(pending_key("l", "k1")) == 0
    assert await redis_client.zcard(pending_key("l", "k2")) == 1
    await ordering.forget("d", "m")
    assert await redis_client.zcard(pending_key("l", "k2")) == 0


async def test_the_lease_lock_is_exclusive_renewed_and_released(redis_client: Redis) -> None:
    first = Ordering(redis_client, retention_s=60, lease_s=1.0, wait_s=0.05)
    second = Ordering(redis_client, retention_s=60, lease_s=1.0, wait_s=0.05)
    name = keys.record(keys.LOCK, "l", "k")
    async with first.turn(Step("d1", 1, "l", "k", "0"), ()):
        with pytest.raises(OrderWait) as held:
            async with second.turn(Step("d2", 2, "l", "k", "0"), ()):
                pass
        assert 0 < held.value.defer_s <= 1.0

        async def renewed_past_its_lease() -> bool:
            return bool(await redis_client.exists(name)) and time.monotonic() - started > 1.5

        started = time.monotonic()
        await until(renewed_past_its_lease, timeout_s=5)
    assert not await redis_client.exists(name)


async def test_a_run_that_outlived_its_lease_does_not_put_an_older_order_back(redis_client: Redis) -> None:
    """Run A of d1 stalls past its lease (a frozen process, Redis away) while its upstream call is
    in flight; d2, newer, takes the record's turn and ends with its order. When A ends, the
    record's order must stay d2's: put back to d1's, a later d3 older than d2 would overwrite
    d2's newer data."""
    ordering = Ordering(redis_client, retention_s=60, lease_s=30, wait_s=0.05)
    stalled = Step("d1-stalled", 1, "link", "lease", "0")
    async with ordering.turn(stalled, ()) as a:
        await redis_client.delete(stalled.lock)  # A's lease ran out while it stalled
        async with ordering.turn(Step("d2-newer", 2, "link", "lease", "0"), ()) as b:
            await ordering.end(b, "entry", leave_pending=True, order="2000", unpin=PINS)
        await ordering.end(a, "entry", leave_pending=True, order="1000", unpin=PINS)
    assert await redis_client.get(stalled.order) == b"2000"
    # an order as text (an ISO time) is compared as text, as the worker compares it
    text = Step("d3", 3, "link", "text", "0")
    for order in ("2026-11-29T10:00:00Z", "2026-11-29T09:00:00Z"):
        async with ordering.turn(text, ()) as held:
            await ordering.end(held, "entry", leave_pending=True, order=order, unpin=PINS)
        await redis_client.hdel(keys.done(text.delivery_id), "0")
    assert await redis_client.get(text.order) == b"2026-11-29T10:00:00Z"


async def test_a_turn_cut_before_the_lock_was_answered_releases_it(redis_client: Redis) -> None:
    """A job cut (a drain, its time limit) after the turn's script took the lock but before its
    answer arrived: nobody knows that the lock is held, and the record would wait out the lease."""
    ordering = Ordering(redis_client, retention_s=60, lease_s=30, wait_s=0.05)
    name = keys.record(keys.LOCK, "link", "cut")
    begin, answered = ordering._begin, asyncio.Event()

    async def begin_answered_late(**arguments: Any) -> Any:
        found = await begin(**arguments)  # the script ran: the lock is taken
        answered.set()
        await asyncio.Event().wait()  # its answer "still on the wire" when the job is cut
        return found

    ordering._begin = begin_answered_late  # type: ignore[method-assign]
    turn = asyncio.create_task(_take_turn(ordering, "cut-1", 1, key="cut"))
    await asyncio.wait_for(answered.wait(), timeout=5)
    assert await redis_client.exists(name)
    await cancel_and_wait(turn)

    async def released() -> bool:
        return not await redis_client.exists(name)

    await until(released, timeout_s=5)  # not the lease's 30 s


async def test_a_step_ended_is_done_linked_ordered_and_out_of_line(redis_client: Redis) -> None:
    ordering = Ordering(redis_client, retention_s=60, lease_s=5, wait_s=0.05)
    await _queued(redis_client, "d")
    await ordering.register("d", "m", 1, [("l", "k")])
    step = Step("d", 1, "l", "k", "3")
    async with ordering.turn(step, {"m"}) as held:
        assert (held.done, held.entry_id, held.last_order) == (False, None, None)
        await ordering.end(held, "entry-1", leave_pending=True, link_to="entry-1", order="7", unpin=PINS)
    assert await redis_client.hget(keys.done("d"), "3") == b"entry-1"
    assert await redis_client.get(step.linked) == b"entry-1"
    assert await redis_client.get(step.order) == b"7"
    assert await redis_client.zcard(pending_key("l", "k")) == 0
    assert not await redis_client.exists(step.lock)
    # A rerun of the same job finds the step done, without taking the lock.
    async with ordering.turn(step, {"m"}) as again:
        assert again.done
        assert not await redis_client.exists(step.lock)
    # The next command for the record reads what the first one left.
    async with ordering.turn(Step("e", 2, "l", "k", "0"), {"m"}) as later:
        assert (later.entry_id, later.last_order) == ("entry-1", "7")


async def test_a_turn_sets_the_pins_that_apply_and_returns_those_an_earlier_run_set(
    redis_client: Redis,
) -> None:
    ordering = Ordering(redis_client, retention_s=60, lease_s=5, wait_s=0.05)
    await _queued(redis_client, "g")
    await ordering.register("g", "m", 1, [("l", "k")])
    step = Step("g", 1, "l", "k", "0")

    def pins(run: str) -> list[Pin]:
        whens = (Pin.ALWAYS, Pin.UNLINKED, Pin.LINKED)
        return [Pin(name, f"{run}-{when}".encode(), when) for name, when in zip(PINS, whens, strict=True)]

    async with ordering.turn(step, {"m"}, pins=pins("first")) as held:  # no entry linked yet
        assert held.pinned == [None, None, None]
    assert [await redis_client.get(name) for name in PINS] == [b"first-a", b"first-u", None]
    async with ordering.turn(step, {"m"}, pins=pins("rerun")) as held:  # a rerun: the first run's
        assert held.pinned == [b"first-a", b"first-u", None]
    await redis_client.set(step.linked, "entry-1")
    async with ordering.turn(step, {"m"}, pins=pins("linked")) as held:  # now a patch
        assert held.pinned == [b"first-a", None, None]
    assert [await redis_client.get(name) for name in PINS] == [b"first-a", b"first-u", b"linked-l"]
    assert 50 <= await redis_client.ttl(PINS[2]) <= 60  # kept for the retention


# -- whole pipelines ------------------------------------------------------------------------------


async def test_per_key_order_holds_across_two_worker_processes(redis_url: str, tmp_path: Path) -> None:
    async with pipeline(redis_url, tmp_path / "mappings", mapping_files={"crm.yaml": CRM}) as pipe:
        second = Runtime(
            pipelines.test_settings(tmp_path / "mappings"),
            redis_url=redis_url,
            environ={"CONTACT_SECRET": SECRET},
            upstream=(pipe.sandbox_url, DEMO_API_KEY),
        )
        second.load_mappings()
        await second.start_worker()
        try:
            # Failures make early events retry while later ones are already queued.
            await pipe.set_faults(error_rate=0.3, seed=11, latency_ms=5)
            stages = [STAGES[n % len(STAGES)] for n in range(12)]
            ids = []
            for step, stage in enumerate(stages):
                body = {"data": {"email": "ord@example.com", "stage": stage, "step": step}}
                raw = orjson.dumps(body)
                response = await pipe.post("crm", raw, sign(raw))
                assert response.status_code == 202
                ids.append(response.json()["delivery_id"])
            for delivery_id in ids:
                await pipe.wait_status(delivery_id, "delivered", timeout_s=30)
        finally:
            await second.close()
        names = {s.id: s.name for s in pipe.sandbox.tables[DEMO_TABLE_ID].spec.leadStates}
        entries = await pipe.entries()
        assert len(entries) == 1
        assert entries[0]["data"] == {"email": "ord@example.com", "step": 11}
        events = [e for e in await pipe.events() if e["entryId"] == entries[0]["id"]]
        assert [e["type"] for e in events].count("table.entry.added") == 1
        # The create sets the first stage, then every patch moves it on: in the order sent.
        changes = [e["leadStateId"] for e in events if e["type"] == "table.entry.leadState.changed"]
        assert [names[c] for c in changes] == stages


async def test_an_older_event_is_skipped_as_stale_and_counted(redis_url: str, tmp_path: Path) -> None:
    async with pipeline(redis_url, tmp_path / "mappings", mapping_files={"ordered.yaml": ORDERED}) as pipe:
        newer = {"data": {"email": "o@example.com", "name": "Newer", "updated_at": "2024-05-02T10:00:00Z"}}
        older = {"data": {"email": "o@example.com", "name": "Older", "updated_at": "2024-05-01T10:00:00Z"}}
        ids = []
        for body in (newer, older):
            raw = orjson.dumps(body)
            ids.append((await pipe.post("ordered", raw, sign(raw))).json()["delivery_id"])
        for delivery_id in ids:
            await pipe.wait_status(delivery_id, "delivered")
        entries = await pipe.entries()
        assert [e["data"]["name"] for e in entries] == ["Newer"]
        assert await pipe.redis.hget(keys.done(ids[1]), "0") == b"stale"
        stale = pipe.runtime.metrics.registry.get_sample_value(
            "leadbridge_commands_total", {"mapping": "ordered", "action": "upsert", "outcome": "stale"}
        )
        assert stale == 1


SCOPED = f"""\
version: 1
name: scoped
provider: standard-webhooks
verify: {{secret: "${{CONTACT_SECRET}}"}}
table: {DEMO_TABLE_ID}
action: upsert
key: data.id
order: data.at
order_scope: data.property
lead:
  data:
    id: data.id
    name: {{path: data.value, when: "data.property == 'name'"}}
    city: {{path: data.value, when: "data.property == 'city'"}}
"""


async def test_order_scope_compares_order_per_scope(redis_url: str, tmp_path: Path) -> None:
    """One event per changed property, as HubSpot sends them: a change of the name made before a
    change of the city but delivered after it is applied (it is the newest of its scope); an older
    change of the city than the one applied is stale."""
    async with pipeline(redis_url, tmp_path / "mappings", mapping_files={"scoped.yaml": SCOPED}) as pipe:

        async def send(prop: str, value: str, at: str) -> str:
            raw = orjson.dumps({"data": {"id": "c-1", "property": prop, "value": value, "at": at}})
            delivery_id: str = (await pipe.post("scoped", raw, sign(raw))).json()["delivery_id"]
            assert await pipe.wait_status(delivery_id, "delivered") == "delivered"
            return delivery_id

        await send("city", "Berlin", "2024-05-02T10:00:00Z")
        name = await send("name", "Ada", "2024-05-01T10:00:00Z")  # older, of another scope
        city = await send("city", "Paris", "2024-05-01T12:00:00Z")  # older, of the same scope
        (entry,) = await pipe.entries()
        assert entry["data"] == {"id": "c-1", "name": "Ada", "city": "Berlin"}
        assert await pipe.redis.hget(keys.done(name), "0") != b"stale"
        assert await pipe.redis.hget(keys.done(city), "0") == b"stale"


async def test_a_patch_that_arrives_first_waits_for_the_create(redis_url: str, tmp_path: Path) -> None:
    files = {"form.yaml": FORM, "crm-patch.yaml": CRM_PATCH}
    async with pipeline(redis_url, tmp_path / "mappings", mapping_files=files) as pipe:
        patch = orjson.dumps({"data": {"email": "p@example.com", "phone": "+4915100000000"}})
        first = (await pipe.post("crm-patch", patch, sign(patch))).json()["delivery_id"]

        async def waited() -> bool:
            return int(await pipe.redis.hget(keys.delivery(first), "attempts") or 0) >= 1

        await until(waited)
        create = orjson.dumps({"data": {"email": "p@example.com", "name": "Pat"}})
        second = (await pipe.post("form", create, sign(create))).json()["delivery_id"]
        await pipe.wait_status(second, "delivered")
        await pipe.wait_status(first, "delivered")
        entries = await pipe.entries()
        assert len(entries) == 1
        assert entries[0]["data"] == {"email": "p@example.com", "name": "Pat", "phone": "+4915100000000"}


async def test_the_last_step_ended_with_finish_delivers_it_and_ends_its_job(redis_client: Redis) -> None:
    ordering = Ordering(redis_client, retention_s=60, lease_s=5, wait_s=0.05)
    await _queued(redis_client, "f")
    await redis_client.hset(keys.delivery("f"), mapping={"mapping": "m", "status": "retrying", "reason": "x"})
    await redis_client.zadd(keys.DLQ, {"f": 1.0})  # a replayed dead letter
    joined = await ordering.register("f", "m", 1, [("l", "k1"), ("l", "k2")])
    async with ordering.turn(Step("f", 1, "l", "k2", "1"), {"m"}) as held:
        await ordering.end(held, "entry-2", leave_pending=True, finish=("m", joined), unpin=PINS)
    assert await redis_client.hget(keys.delivery("f"), "status") == b"delivered"
    assert not await redis_client.hexists(keys.delivery("f"), "reason")
    assert await redis_client.zscore(keys.DLQ, "f") is None
    for name in [*joined, unplanned_key("m")]:
        assert await redis_client.zscore(name, "f") is None
    # ...and its arq job is done: out of the queue.
    assert await redis_client.zscore(arq_adapter.QUEUE_KEY, "f") is None


async def test_a_turn_can_register_the_delivery_in_the_same_round_trip(redis_client: Redis) -> None:
    ordering = Ordering(redis_client, retention_s=60, lease_s=5, wait_s=0.05)
    await _queued(redis_client, "r")
    await redis_client.zadd(unplanned_key("m"), {"r": 4})
    joined_before = await ordering.register("r", "m", 4, [("l", "old")])  # an earlier run's plan
    await redis_client.zadd(unplanned_key("m"), {"r": 4})  # (as if its planning ran again)
    registration = Registration.of("r", "m", [("l", "k1"), ("l", "k2")], joined_before)
    async with ordering.turn(Step("r", 4, "l", "k1", "0"), {"m"}, registration) as held:
        assert not held.done
        assert await redis_client.zscore(pending_key("l", "k1"), "r") == 4
        assert await redis_client.zscore(pending_key("l", "k2"), "r") == 4
        assert await redis_client.zscore(pending_key("l", "old"), "r") is None
        assert await redis_client.zscore(unplanned_key("m"), "r") is None
        stored = await redis_client.hget(keys.delivery("r"), "pending_keys")
        assert orjson.loads(stored) == sorted([pending_key("l", "k1"), pending_key("l", "k2")])
