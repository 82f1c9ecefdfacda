"""Create / patch / upsert semantics against the sandbox, through the whole pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.errors import MappingError, UpstreamError
from bridge.sandbox import DEMO_TABLE_ID
from bridge.sandbox.tables import CustomFieldSpec
from tests.pipeline import SECRET, Pipeline, pipeline, sign
from tests.servers import until

HEADER = f"""\
version: 1
provider: standard-webhooks
verify:
  secret: ${{CONTACT_SECRET}}
table: {DEMO_TABLE_ID}
"""

CRM = (
    HEADER
    + """\
name: crm
action: upsert
key: id
lead:
  state: {path: stage, map: {lead: New, sql: Qualified, won: Won}}
  data:
    email: {path: email, when: "email != null"}
    phone: {path: phone, when: "contains(keys(@), 'phone')", on_null: delete}
    company: {path: company, when: "company != null"}
  custom_fields:
    Budget: {path: budget, when: "budget != null", then: [number]}
  follow_up_date: {path: follow_up, then: [datetime]}
"""
)

PATCH_ONLY = (
    HEADER
    + """\
name: crm-patch
action: patch
link: crm
key: id
lead:
  data:
    note: note
"""
)

REQUIRED = (
    HEADER
    + """\
name: strict
action: create
key: id
lead:
  data:
    email: {path: email, required: true}
"""
)

FANOUT = (
    HEADER
    + """\
name: batch
action: upsert
each: "contacts"
key: id
lead:
  data:
    email: email
"""
)

GATED = (
    HEADER
    + """\
name: gated
action: create
when: "type == 'lead'"
lead:
  data:
    email: email
"""
)

REGION = (
    HEADER
    + """\
name: region
action: create
lead:
  custom_fields:
    Region: region
"""
)


@pytest.fixture
async def crm(redis_url: str, tmp_path: Path) -> AsyncIterator[Pipeline]:
    files = {
        "crm.yaml": CRM,
        "crm-patch.yaml": PATCH_ONLY,
        "strict.yaml": REQUIRED,
        "batch.yaml": FANOUT,
        "gated.yaml": GATED,
    }
    async with pipeline(
        redis_url, tmp_path / "mappings", mapping_files=files, environ={"CONTACT_SECRET": SECRET}
    ) as running:
        yield running


def _pipeline(
    redis_url: str, tmp_path: Path, files: dict[str, str], **settings: Any
) -> AbstractAsyncContextManager[Pipeline]:
    """A pipeline with these mapping files (signed with the test secret)."""
    return pipeline(
        redis_url, tmp_path / "m", mapping_files=files, environ={"CONTACT_SECRET": SECRET}, **settings
    )


async def _send(pipe: Pipeline, name: str, payload: dict[str, Any], *final: str) -> str:
    raw = orjson.dumps(payload)
    response = await pipe.post(name, raw, sign(raw))
    assert response.status_code == 202, response.text
    delivery_id: str = response.json()["delivery_id"]
    await pipe.wait_status(delivery_id, *(final or ("delivered",)))
    return delivery_id


async def _only_entry(pipe: Pipeline) -> dict[str, Any]:
    entries = await pipe.entries()
    assert len(entries) == 1
    return entries[0]


async def test_merge_patch_keeps_untouched_keys(crm: Pipeline) -> None:
    await _send(crm, "crm", {"id": 7, "email": "a@example.com", "company": "Acme", "stage": "lead"})
    await _send(crm, "crm", {"id": 7, "company": "Acme Ltd"})
    entry = await _only_entry(crm)
    assert entry["data"] == {"email": "a@example.com", "company": "Acme Ltd"}


async def test_null_deletes_only_when_the_source_cleared_it(crm: Pipeline) -> None:
    await _send(crm, "crm", {"id": 8, "email": "b@example.com", "phone": "+4930123456"})
    await _send(crm, "crm", {"id": 8, "company": "B"})  # no phone key: untouched
    assert (await _only_entry(crm))["data"]["phone"] == "+4930123456"
    await _send(crm, "crm", {"id": 8, "phone": None})  # cleared at the source: deleted
    data = (await _only_entry(crm))["data"]
    assert "phone" not in data
    assert data["email"] == "b@example.com"


async def test_a_lone_surrogate_in_a_value_is_delivered_as_a_replacement_character(crm: Pipeline) -> None:
    # A form field cut inside an emoji, as JavaScript's JSON.stringify writes it: it used to be a
    # 400, then the same on every retry of the provider, and the lead was lost.
    raw = rb'{"id": 51, "email": "s@example.com", "company": "Caf\ud83d"}'
    response = await crm.post("crm", raw, sign(raw))
    assert response.status_code == 202, response.text
    await crm.wait_status(response.json()["delivery_id"], "delivered")
    assert (await _only_entry(crm))["data"] == {"email": "s@example.com", "company": "Caf\ufffd"}


async def test_a_state_change_fires_exactly_one_event(crm: Pipeline) -> None:
    await _send(crm, "crm", {"id": 9, "email": "c@example.com", "stage": "lead"})
    await _send(crm, "crm", {"id": 9, "stage": "sql"})
    await _send(crm, "crm", {"id": 9, "stage": "sql"})  # same state again: no event
    changes = [e for e in await crm.events() if e["type"] == "table.entry.leadState.changed"]
    assert len(changes) == 2  # the initial one on create, then New -> Qualified
    assert changes[1]["previousLeadStateId"] == changes[0]["leadStateId"]
    assert changes[1]["leadStateId"] != changes[0]["leadStateId"]
    assert [e["type"] for e in await crm.events()].count("table.entry.added") == 1


async def test_follow_up_date_on_create_is_applied_right_after(crm: Pipeline) -> None:
    await _send(crm, "crm", {"id": 10, "email": "d@example.com", "follow_up": 1767225600})
    entry = await _only_entry(crm)
    assert entry["followUpDate"].startswith("2026-01-01T00:00:00")


RAW_FOLLOW_UP = (
    HEADER
    + """\
name: raw-follow-up
action: upsert
key: id
lead:
  data:
    email: {path: email, when: "email != null"}
  follow_up_date: {path: follow_up, when: "follow_up != null"}
"""
)


async def test_a_create_whose_follow_up_patch_fails_for_good_stays_linked(
    redis_url: str, tmp_path: Path
) -> None:
    # The create answers, then the patch of what a create cannot set is refused (400: not a
    # date) and the delivery is dead-lettered. The entry exists all the same: the record's next
    # delivery must patch it, not create a second lead (two `added` automations).
    async with _pipeline(redis_url, tmp_path, {"raw.yaml": RAW_FOLLOW_UP}) as pipe:
        first = await _send(
            pipe, "raw-follow-up", {"id": 21, "email": "f@example.com", "follow_up": "next tuesday"}, "dead"
        )
        reason = (await pipe.redis.hget(f"lb:d:{first}", "reason")).decode()
        assert "400" in reason or "followUpDate" in reason, reason
        created = await _only_entry(pipe)
        await _send(pipe, "raw-follow-up", {"id": 21, "email": "g@example.com"})
        entry = await _only_entry(pipe)
        assert entry["id"] == created["id"]
        assert entry["data"] == {"email": "g@example.com"}
        assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1


SIMPLE = (
    HEADER
    + """\
name: simple
action: upsert
key: id
lead:
  data:
    email: email
"""
)


@pytest.mark.parametrize(
    ("hang_s", "limits"),
    [
        pytest.param(0.5, {}, id="the-answer-lost"),
        # the job's time limit cuts the request (a cancellation, not an upstream error)
        pytest.param(1.5, {"BRIDGE_JOB_TIMEOUT_S": 0.5}, id="the-job-out-of-time"),
    ],
)
async def test_a_retry_after_a_lost_answer_resends_the_first_body_though_the_mapping_changed(
    redis_url: str, tmp_path: Path, hang_s: float, limits: dict[str, float]
) -> None:
    # The create is applied upstream but its answer is lost (or never waited for); before the
    # retry, the mapping is reloaded with one more field. The retry must send the body first
    # sent under its idempotency key (the upstream answers 422 to the same key with another
    # body, and the delivery would die unlinked: the record's next delivery would create a
    # second lead).
    async with _pipeline(redis_url, tmp_path, {"simple.yaml": SIMPLE}, **limits) as pipe:
        await pipe.set_faults(lost_response_rate=1.0, timeout_s=hang_s)
        raw = orjson.dumps({"id": 31, "email": "h@example.com", "company": "Acme"})
        first = (await pipe.post("simple", raw, sign(raw))).json()["delivery_id"]
        await until(pipe.entries)  # applied upstream, the answer not yet lost
        await pipe.set_faults()
        (tmp_path / "m" / "simple.yaml").write_text(SIMPLE + "    company: company\n")
        assert pipe.runtime.mappings.reload()
        assert await pipe.wait_status(first, "delivered", "dead") == "delivered"
        created = await _only_entry(pipe)
        assert created["data"] == {"email": "h@example.com"}  # the body first sent
        assert await pipe.redis.keys("lb:sent:*") == []  # pins dropped once the command is done
        await _send(pipe, "simple", {"id": 31, "email": "i@example.com", "company": "Acme"})
        entry = await _only_entry(pipe)
        assert entry["id"] == created["id"]
        assert entry["data"] == {"email": "i@example.com", "company": "Acme"}
        assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1


async def test_a_patch_cut_by_a_drain_is_sent_again_with_its_first_body_though_the_mapping_changed(
    redis_url: str, tmp_path: Path
) -> None:
    # The patch is applied upstream, its answer not yet back, when a drain cancels the job (a
    # deploy); the new mapping has one more field. The rerun has no attempt on record: it must
    # still send the body first sent under the key (another gets 422, dead-lettered, and a
    # replay would send it again).
    async with _pipeline(redis_url, tmp_path, {"simple.yaml": SIMPLE}) as pipe:
        await _send(pipe, "simple", {"id": 41, "email": "a@example.com"})  # created and linked
        deliverer = pipe.runtime.deliverer
        assert deliverer is not None
        release = deliverer.ordering._release
        released_while_cancelling: list[int] = []

        async def watched_release(**kwargs: Any) -> Any:
            task = asyncio.current_task()
            assert task is not None
            released_while_cancelling.append(task.cancelling())
            return await release(**kwargs)

        # The cut job lets go of the record's lock from a task that is not being cancelled: on
        # Python 3.11.0-3.11.2 a Redis call made from the cancelled one raises CancelledError,
        # and the rerun waited for the lock's lease (30 s) instead.
        deliverer.ordering._release = watched_release  # type: ignore[method-assign]
        await pipe.set_faults(lost_response_rate=1.0, timeout_s=1.5)
        raw = orjson.dumps({"id": 41, "email": "b@example.com", "company": "Acme"})
        delivery = (await pipe.post("simple", raw, sign(raw))).json()["delivery_id"]

        async def patched() -> bool:
            entries = await pipe.entries()
            return bool(entries) and entries[0]["data"].get("email") == "b@example.com"

        await until(patched)  # applied upstream, its answer hanging
        await pipe.set_faults()
        (tmp_path / "m" / "simple.yaml").write_text(SIMPLE + "    company: company\n")
        assert pipe.runtime.mappings.reload()
        pipe.runtime._worker.tasks[delivery].cancel()  # what a drain does to a running job
        assert await pipe.wait_status(delivery, "delivered", "dead") == "delivered"
        assert (await _only_entry(pipe))["data"] == {"email": "b@example.com"}  # the first body
        assert released_while_cancelling == [0]


async def test_an_upsert_of_a_linked_record_needs_no_create_body(crm: Pipeline) -> None:
    # An update of a linked record is a patch: a create body it cannot build (a table without a
    # default lead state, and no state in the event) must not stop it.
    await _send(crm, "crm", {"id": 61, "email": "a@example.com", "stage": "lead"})
    deliverer = crm.runtime.deliverer
    assert deliverer is not None
    resolve = deliverer.tables.resolve_state

    async def no_default(table_id: str, name: str | None) -> str:
        if name is None:
            raise MappingError(f"table {table_id} has no default lead state")
        return await resolve(table_id, name)

    deliverer.tables.resolve_state = no_default  # type: ignore[method-assign]
    delivery = await _send(crm, "crm", {"id": 61, "company": "Acme"}, "delivered", "dead")
    assert await crm.delivery_status(delivery) == "delivered"
    assert (await _only_entry(crm))["data"] == {"email": "a@example.com", "company": "Acme"}


async def test_a_create_sent_again_after_a_400_is_pinned_before_it_goes(
    redis_url: str, tmp_path: Path
) -> None:
    # A keyed create is pinned before it is sent (a worker killed while it is in flight leaves
    # its body for the rerun). Refused with 400 (unpinned), the table refreshed, the create
    # built again goes out pinned too.
    async with _pipeline(redis_url, tmp_path, {"simple.yaml": SIMPLE}) as pipe:
        deliverer = pipe.runtime.deliverer
        assert deliverer is not None
        create = deliverer.connect.create_entry
        pinned_while_sent: list[list[bytes]] = []

        async def refused_once(body: Any, key: str) -> dict[str, Any]:
            pinned_while_sent.append(await pipe.redis.keys("lb:sent:*"))
            if len(pinned_while_sent) == 1:
                raise UpstreamError("unknown custom field", retryable=False, status=400)
            return await create(body, key)

        deliverer.connect.create_entry = refused_once  # type: ignore[method-assign]
        await _send(pipe, "simple", {"id": 71, "email": "k@example.com"})
        assert [len(pins) for pins in pinned_while_sent] == [1, 1]
        assert await pipe.redis.keys("lb:sent:*") == []  # dropped once the command is done


async def test_a_create_body_that_fails_to_build_holds_up_no_other_record(
    redis_url: str, tmp_path: Path
) -> None:
    # The create body is built before the record's turn, where the delivery also registers
    # (leaves its mapping's "unplanned" set). A retryable failure building it (the table's GET)
    # must not leave it there, holding up every record of its link group until its retry.
    async with _pipeline(
        redis_url, tmp_path, {"simple.yaml": SIMPLE}, BRIDGE_RETRY_BASE_S=20, BRIDGE_RETRY_MAX_DELAY_S=20
    ) as pipe:
        deliverer = pipe.runtime.deliverer
        assert deliverer is not None
        resolve = deliverer.tables.resolve_state
        failed: list[str] = []

        async def fails_twice(table_id: str, name: str | None) -> str:
            if len(failed) < 2:  # the body built for the pin, then for the create itself
                failed.append(table_id)
                raise UpstreamError("GET table answered 503", retryable=True, status=503)
            return await resolve(table_id, name)

        deliverer.tables.resolve_state = fails_twice  # type: ignore[method-assign]
        raw = orjson.dumps({"id": 81, "email": "a@example.com"})
        first = (await pipe.post("simple", raw, sign(raw))).json()["delivery_id"]
        await pipe.wait_status(first, "retrying")  # its retry is 20 s away
        assert await pipe.redis.zscore("lb:unplanned:simple", first) is None
        await _send(pipe, "simple", {"id": 82, "email": "b@example.com"})  # another record: at once


CREATE_FOLLOW_UP = (
    HEADER
    + """\
name: create-follow-up
action: create
key: id
lead:
  data:
    email: email
  follow_up_date: {path: follow_up, then: [datetime]}
"""
)


async def test_a_retry_after_the_follow_up_patch_lost_its_answer_sends_the_first_create_again(
    redis_url: str, tmp_path: Path
) -> None:
    # The create is answered; the patch that follows it is applied but its answer is lost; the
    # mapping is reloaded with one more field before the retry. The retry runs the command
    # again: its create must go with the body first sent (the upstream replays it), not with
    # the new mapping's (422: dead-lettered, unlinked).
    async with _pipeline(redis_url, tmp_path, {"follow.yaml": CREATE_FOLLOW_UP}) as pipe:
        # seeded: the first write (the create) goes through, the second (its patch) is lost
        await pipe.set_faults(lost_response_rate=0.5, seed=10, timeout_s=0.5)
        raw = orjson.dumps({"id": 41, "email": "j@example.com", "company": "Acme", "follow_up": 1767225600})
        first = (await pipe.post("create-follow-up", raw, sign(raw))).json()["delivery_id"]

        async def patched() -> bool:
            entries = await pipe.entries()
            return bool(entries) and entries[0].get("followUpDate") is not None

        await until(patched)  # both applied upstream, the patch's answer not yet lost
        await pipe.set_faults()
        (tmp_path / "m" / "follow.yaml").write_text(
            CREATE_FOLLOW_UP.replace("    email: email\n", "    email: email\n    company: company\n")
        )
        assert pipe.runtime.mappings.reload()
        assert await pipe.wait_status(first, "delivered", "dead") == "delivered"
        entry = await _only_entry(pipe)
        assert entry["data"] == {"email": "j@example.com"}
        assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1


async def test_every_request_of_a_keyed_command_is_pinned_before_it_goes(
    redis_url: str, tmp_path: Path
) -> None:
    # A worker killed while a request is in flight leaves its body pinned for the rerun: a create,
    # the patch that follows it, a patch of a linked record. Nothing stays pinned once it is done.
    files = {"follow.yaml": CREATE_FOLLOW_UP, "crm.yaml": CRM}
    async with _pipeline(redis_url, tmp_path, files) as pipe:
        deliverer = pipe.runtime.deliverer
        assert deliverer is not None
        create, patch = deliverer.connect.create_entry, deliverer.connect.patch_entry
        pinned_while_sent: list[tuple[str, list[str]]] = []

        async def pins(key: str) -> None:
            found = sorted(k.decode().rsplit("-", 1)[1] for k in await pipe.redis.keys("lb:sent:*"))
            pinned_while_sent.append((key.rsplit("-", 1)[1], found))

        async def create_seen(body: Any, key: str) -> dict[str, Any]:
            await pins(key)
            return await create(body, key)

        async def patch_seen(entry_id: str, body: Any, key: str) -> dict[str, Any]:
            await pins(key)
            return await patch(entry_id, body, key)

        deliverer.connect.create_entry = create_seen  # type: ignore[method-assign]
        deliverer.connect.patch_entry = patch_seen  # type: ignore[method-assign]
        await _send(pipe, "create-follow-up", {"id": 51, "email": "f@example.com", "follow_up": 1767225600})
        await _send(pipe, "crm", {"id": 52, "email": "a@example.com", "stage": "lead"})
        await _send(pipe, "crm", {"id": 52, "company": "Acme"})
        assert pinned_while_sent == [
            ("c", ["c", "c2"]),  # the create, and its follow-up patch, pinned by the turn
            ("c2", ["c", "c2"]),
            ("c", ["c"]),  # an upsert of a record with no entry: its create
            ("p", ["p"]),  # of a linked one: its patch
        ]
        assert await pipe.redis.keys("lb:sent:*") == []


async def test_patch_waits_for_the_linked_create(crm: Pipeline) -> None:
    raw = orjson.dumps({"id": 11, "note": "called back"})
    early = (await crm.post("crm-patch", raw, sign(raw))).json()["delivery_id"]

    async def retried() -> bool:
        return int(await crm.redis.hget(f"lb:d:{early}", "attempts") or 0) >= 1

    await until(retried)
    await _send(crm, "crm", {"id": 11, "email": "e@example.com"})
    await crm.wait_status(early, "delivered")
    assert (await _only_entry(crm))["data"] == {"email": "e@example.com", "note": "called back"}


async def test_patch_without_a_create_dead_letters_with_the_reason(redis_url: str, tmp_path: Path) -> None:
    async with _pipeline(redis_url, tmp_path, {"crm-patch.yaml": PATCH_ONLY}, BRIDGE_LINK_WAIT_S=0.3) as pipe:
        delivery_id = await _send(pipe, "crm-patch", {"id": 12, "note": "x"}, "dead")
        reason = (await pipe.redis.hget(f"lb:d:{delivery_id}", "reason")).decode()
        assert "no entry is linked" in reason
        assert await pipe.entries() == []


async def test_required_null_dead_letters_then_replay_after_fix(crm: Pipeline) -> None:
    delivery_id = await _send(crm, "strict", {"id": 13}, "dead")
    reason = (await crm.redis.hget(f"lb:d:{delivery_id}", "reason")).decode()
    assert "email" in reason
    assert await crm.redis.zscore("lb:dlq", delivery_id) is not None
    assert await crm.entries() == []


async def test_each_fans_out_one_command_per_element(crm: Pipeline) -> None:
    contacts = [{"id": i, "email": f"f{i}@example.com"} for i in range(5)]
    await _send(crm, "batch", {"contacts": contacts})
    assert len(await crm.entries()) == 5


async def test_fan_out_over_the_bound_dead_letters(redis_url: str, tmp_path: Path) -> None:
    async with _pipeline(
        redis_url, tmp_path, {"batch.yaml": FANOUT}, BRIDGE_MAX_COMMANDS_PER_DELIVERY=3
    ) as pipe:
        contacts = [{"id": i, "email": f"g{i}@example.com"} for i in range(4)]
        await _send(pipe, "batch", {"contacts": contacts}, "dead")
        assert await pipe.entries() == []


async def test_when_false_is_ignored_and_calls_nothing(crm: Pipeline) -> None:
    await _send(crm, "gated", {"type": "ping", "email": "h@example.com"}, "ignored")
    assert await crm.entries() == []
    text = (await crm.http.get(f"{crm.url}/metrics")).text
    assert 'leadbridge_webhooks_total{mapping="gated",outcome="ignored"} 1.0' in text


async def test_custom_field_added_upstream_is_found_by_refreshing(redis_url: str, tmp_path: Path) -> None:
    files = {"crm.yaml": CRM, "region.yaml": REGION}
    async with pipeline(
        redis_url, tmp_path / "m", mapping_files=files, environ={"CONTACT_SECRET": SECRET}
    ) as pipe:
        await _send(pipe, "crm", {"id": 14, "email": "i@example.com", "budget": "12"})  # caches the table
        table = pipe.sandbox.table(DEMO_TABLE_ID)
        spec = table.spec
        region = CustomFieldSpec(id="region-field-id", name="Region", type="text")
        pipe.sandbox.add_table(spec.model_copy(update={"customFields": [*spec.customFields, region]}))
        await _send(pipe, "region", {"region": "EMEA"})
        created = [e for e in await pipe.entries() if "region-field-id" in e["customFieldData"]]
        assert len(created) == 1
        assert created[0]["customFieldData"]["region-field-id"] == "EMEA"
