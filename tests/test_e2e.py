"""End to end: a signed webhook in, exactly one lead out (sandbox + web + arq worker + Valkey)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from bridge.sandbox import DEMO_API_KEY, DEMO_TABLE_ID
from tests.pipeline import Pipeline, sign
from tests.servers import until

CONTACT = {"type": "contact.submitted", "data": {"email": "ada@example.com", "first_name": "Ada"}}


async def _queued(pipe: Pipeline) -> int:
    return int(await pipe.redis.zcard("arq:queue")) + len([k async for k in pipe.redis.scan_iter("lb:d:*")])


async def test_signed_webhook_creates_one_entry_with_the_default_state(pipe: Pipeline) -> None:
    response = await pipe.send_signed(CONTACT)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted"
    await pipe.wait_status(body["delivery_id"], "delivered")
    entries = await pipe.entries()
    assert len(entries) == 1
    table = await pipe.http.get(
        f"{pipe.sandbox_url}/connect/tables/{DEMO_TABLE_ID}",
        headers={"authorization": f"Bearer {DEMO_API_KEY}"},
    )
    default_state = next(s["id"] for s in table.json()["leadStates"] if s.get("default"))
    assert entries[0]["leadStateId"] == default_state
    assert entries[0]["data"] == {"email": "ada@example.com", "first_name": "Ada"}
    types = [e["type"] for e in await pipe.events()]
    assert types.count("table.entry.added") == 1


async def test_bad_or_missing_signature_is_401_and_nothing_is_queued(pipe: Pipeline) -> None:
    raw = orjson.dumps(CONTACT)
    good = sign(raw)
    bad = dict(good, **{"webhook-signature": "v1," + "A" * 44})
    missing = {k: v for k, v in good.items() if k != "webhook-signature"}
    wrong_key = sign(raw, key=b"another-key-entirely-0123456789ab")
    tampered_body = raw.replace(b"Ada", b"Eve")
    for headers, body in ((bad, raw), (missing, raw), (wrong_key, raw), (good, tampered_body)):
        response = await pipe.post("contact", body, headers)
        assert response.status_code == 401
        assert response.json() == {"status": "error", "error": "unauthorized"}
    assert await _queued(pipe) == 0


async def test_timestamp_outside_tolerance_is_401(pipe: Pipeline) -> None:
    raw = orjson.dumps(CONTACT)
    for offset in (-301, 301, -3600):
        response = await pipe.post("contact", raw, sign(raw, timestamp=int(time.time()) + offset))
        assert response.status_code == 401
    assert await _queued(pipe) == 0


async def test_the_same_event_three_times_makes_one_entry(pipe: Pipeline) -> None:
    raw = orjson.dumps(CONTACT)
    headers = sign(raw, msg_id="msg_same_event")
    answers = [await pipe.post("contact", raw, headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 200, 200]
    assert [a.json()["status"] for a in answers] == ["accepted", "duplicate", "duplicate"]
    assert len({a.json()["delivery_id"] for a in answers}) == 1
    await pipe.wait_status(answers[0].json()["delivery_id"], "delivered")
    assert len(await pipe.entries()) == 1
    assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1


async def test_concurrent_duplicates_are_accepted_once(pipe: Pipeline) -> None:
    raw = orjson.dumps(CONTACT)
    headers = sign(raw, msg_id="msg_concurrent")
    answers = await asyncio.gather(*(pipe.post("contact", raw, headers) for _ in range(20)))
    assert sorted(a.status_code for a in answers) == [200] * 19 + [202]
    await pipe.wait_status(answers[0].json()["delivery_id"], "delivered")
    assert len(await pipe.entries()) == 1


async def test_oversized_body_is_413_before_it_is_read(pipe: Pipeline) -> None:
    host, port = pipe.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    # Declare 100 MB and send none of it: the answer must come without the body.
    writer.write(
        b"POST /hooks/contact HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 413")


async def test_streamed_body_over_the_limit_is_413(pipe: Pipeline) -> None:
    limit = pipe.runtime.settings.max_body_bytes
    sent = 0

    async def chunks() -> Any:
        nonlocal sent
        for _ in range(limit // 65536 + 50):
            sent += 65536
            yield b" " * 65536

    response = await pipe.http.post(
        f"{pipe.url}/hooks/contact", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert await _queued(pipe) == 0


async def test_unknown_mapping_is_404(pipe: Pipeline) -> None:
    raw = orjson.dumps(CONTACT)
    response = await pipe.post("no-such-mapping", raw, sign(raw))
    assert response.status_code == 404


async def test_malformed_json_is_400(pipe: Pipeline) -> None:
    raw = b'{"type": "contact.submitted", "data": {'
    response = await pipe.post("contact", raw, sign(raw))
    assert response.status_code == 400
    assert await _queued(pipe) == 0


async def test_wrong_method_is_405(pipe: Pipeline) -> None:
    response = await pipe.http.put(f"{pipe.url}/hooks/contact", content=b"{}")
    assert response.status_code == 405


async def test_upstream_500_then_success_makes_one_entry(pipe: Pipeline) -> None:
    await pipe.set_faults(error_rate=1.0)
    response = await pipe.send_signed(CONTACT)
    delivery_id = response.json()["delivery_id"]

    async def failed_at_least_twice() -> bool:
        return int(await pipe.redis.hget(f"lb:d:{delivery_id}", "attempts") or 0) >= 2

    await until(failed_at_least_twice)
    assert await pipe.entries() == []
    await pipe.set_faults(error_rate=0.0)
    await pipe.wait_status(delivery_id, "delivered")
    assert len(await pipe.entries()) == 1
    assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1


async def test_a_second_event_for_the_same_record_patches_it(pipe: Pipeline) -> None:
    first = await pipe.send_signed(CONTACT)
    await pipe.wait_status(first.json()["delivery_id"], "delivered")
    update = {"type": "contact.submitted", "data": {"email": "ada@example.com", "first_name": "Augusta"}}
    second = await pipe.send_signed(update)
    await pipe.wait_status(second.json()["delivery_id"], "delivered")
    entries = await pipe.entries()
    assert len(entries) == 1
    assert entries[0]["data"]["first_name"] == "Augusta"


async def test_an_upsert_whose_linked_entry_is_gone_upstream_creates_a_new_one(pipe: Pipeline) -> None:
    """The record's link outlives its entry (deleted upstream; here the sandbox's reset, as when
    `run --sandbox` restarts with its in-memory sandbox): the patch answers 404, and an upsert
    then creates, once, and links the new entry, instead of dead-lettering every later event."""
    first = await pipe.send_signed(CONTACT)
    await pipe.wait_status(first.json()["delivery_id"], "delivered")
    gone = (await pipe.entries())[0]["id"]
    assert (await pipe.http.post(f"{pipe.sandbox_url}/sandbox/reset")).status_code == 200
    update = {"type": "contact.submitted", "data": {"email": "ada@example.com", "first_name": "Augusta"}}
    second = await pipe.send_signed(update)
    await pipe.wait_status(second.json()["delivery_id"], "delivered")
    entries = await pipe.entries()
    assert len(entries) == 1
    assert entries[0]["id"] != gone
    assert entries[0]["data"] == {"email": "ada@example.com", "first_name": "Augusta"}
    assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1
    # The new entry is the linked one now: the next event patches it.
    third = await pipe.send_signed({**update, "data": {**update["data"], "first_name": "Ada"}})
    await pipe.wait_status(third.json()["delivery_id"], "delivered")
    assert [(e["id"], e["data"]["first_name"]) for e in await pipe.entries()] == [(entries[0]["id"], "Ada")]


async def test_health_and_readiness(pipe: Pipeline) -> None:
    assert (await pipe.http.get(f"{pipe.url}/healthz")).status_code == 200
    ready = await pipe.http.get(f"{pipe.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["queue"] == "ok"
