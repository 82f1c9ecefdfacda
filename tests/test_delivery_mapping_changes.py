"""A mapping changed between two runs of a delivery whose create was applied upstream and its answer lost."""

from __future__ import annotations

from pathlib import Path

import orjson

from bridge.queue import deliveries
from tests.pipeline import sign
from tests.servers import until
from tests.test_semantics import SIMPLE, _only_entry, _pipeline, _send


async def test_a_retry_whose_body_no_longer_builds_sends_the_body_first_sent(
    redis_url: str, tmp_path: Path
) -> None:
    # The create is applied upstream, its answer lost; before the retry the mapping is reloaded
    # with a lead state the table does not have (a mapping bug). The retry must send the body
    # pinned under its key (the docs: every later attempt sends it), learn the entry and link
    # it; dead-lettered unlinked instead, the record's next event creates a second lead.
    async with _pipeline(redis_url, tmp_path, {"simple.yaml": SIMPLE}) as pipe:
        await pipe.set_faults(lost_response_rate=1.0, timeout_s=0.5)
        raw = orjson.dumps({"id": 91, "email": "a@example.com"})
        first = (await pipe.post("simple", raw, sign(raw))).json()["delivery_id"]
        await until(pipe.entries)  # applied upstream, the answer about to be lost
        await pipe.set_faults()
        broken = SIMPLE.replace("lead:\n", "lead:\n  state: {value: NoSuchState}\n")
        (tmp_path / "m" / "simple.yaml").write_text(broken)
        assert pipe.runtime.mappings.reload()
        assert await pipe.wait_status(first, "delivered", "dead") == "delivered"
        (tmp_path / "m" / "simple.yaml").write_text(SIMPLE)
        assert pipe.runtime.mappings.reload()
        await _send(pipe, "simple", {"id": 91, "email": "b@example.com"})
        entry = await _only_entry(pipe)
        assert entry["data"] == {"email": "b@example.com"}
        assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1


async def test_a_retry_that_the_reloaded_mapping_now_ignores_leaves_no_unlinked_entry(
    redis_url: str, tmp_path: Path
) -> None:
    # The create is applied upstream, its answer lost; before the retry the mapping is reloaded
    # with a `when` that now leaves the delivery out (or a field that is now `required` and
    # null: dead-lettered at planning). The delivery ends without linking the entry its create
    # made, and the record's next event creates a second lead.
    async with _pipeline(redis_url, tmp_path, {"simple.yaml": SIMPLE}) as pipe:
        await pipe.set_faults(lost_response_rate=1.0, timeout_s=0.5)
        raw = orjson.dumps({"id": 92, "email": "a@example.com"})
        first = (await pipe.post("simple", raw, sign(raw))).json()["delivery_id"]
        await until(pipe.entries)
        await pipe.set_faults()
        gated = SIMPLE.replace("key: id\n", "key: id\nwhen: \"email != 'a@example.com'\"\n")
        (tmp_path / "m" / "simple.yaml").write_text(gated)
        assert pipe.runtime.mappings.reload()
        await pipe.wait_status(first, "ignored", "delivered", "dead")
        await _send(pipe, "simple", {"id": 92, "email": "b@example.com"})
        assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1


async def test_a_create_dead_lettered_without_its_answer_is_adopted_by_the_records_next_event(
    redis_url: str, tmp_path: Path
) -> None:
    # The create is applied upstream, its answer lost, and the delivery gives up (here after its
    # one attempt) without learning the entry. The record's next event must not create a second
    # lead: it sends the dead delivery's create again under its key, which the upstream answers
    # with the entry it made, links that, and patches it. A replay of the dead one then patches.
    async with _pipeline(redis_url, tmp_path, {"simple.yaml": SIMPLE}, BRIDGE_RETRY_MAX_ATTEMPTS=1) as pipe:
        await pipe.set_faults(lost_response_rate=1.0, timeout_s=0.5)
        raw = orjson.dumps({"id": 93, "email": "a@example.com"})
        first = (await pipe.post("simple", raw, sign(raw))).json()["delivery_id"]
        assert await pipe.wait_status(first, "dead") == "dead"
        await pipe.set_faults()
        await _send(pipe, "simple", {"id": 93, "email": "b@example.com"})
        entry = await _only_entry(pipe)
        assert entry["data"] == {"email": "b@example.com"}

        assert await deliveries.enqueue_again(pipe.redis, first, 60)
        await pipe.wait_status(first, "delivered")
        await _only_entry(pipe)
        assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1
