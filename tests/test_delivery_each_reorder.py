"""A delivery's commands are recorded done, and keyed, by slot: with `each`, the element's own
identity (`bridge.mapping.elements`), so a mapping reloaded between two runs of the delivery (the
documented repair: fix the mapping, replay) that orders or filters the list otherwise neither
skips an element nor sends one twice. A delivery stored before element ids, or that a worker of
that version ran (its done record holds positions, or a body is pinned under a position's key),
goes on by position."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bridge import worker
from bridge.mapping.commands import LeadCommand
from bridge.mapping.elements import element_ids
from bridge.queue import deliveries, keys
from bridge.queue.deliveries import DeliveryRecord
from bridge.worker import slot
from tests.pipeline import Pipeline, sign
from tests.servers import until
from tests.test_semantics import HEADER, _pipeline

EACH = (
    HEADER
    + """\
name: batch
action: upsert
each: items
key: id
lead:
  state: state
  data:
    email: email
"""
)
# The same batch as `create`s: a command at a stale position would make a second lead.
CREATES = EACH.replace("action: upsert", "action: create").replace("key: id\n", "")
# The repair: no bad state, and the batch gone through in id order (the other way round here).
SORTED = {"each: items": "each: sort_by(items, &id)", "  state: state\n": ""}
ITEMS = [{"id": 2, "email": "a@example.com"}, {"id": 1, "email": "b@example.com", "state": "Nope"}]


def _fixed(text: str) -> str:
    for old, new in SORTED.items():
        text = text.replace(old, new)
    return text


async def _emails(pipe: Pipeline) -> list[str]:
    return sorted(e["data"].get("email") for e in await pipe.entries())


async def _replay_after_the_fix(pipe: Pipeline, tmp_path: Path, text: str) -> None:
    raw = orjson.dumps({"items": ITEMS})
    response = await pipe.post("batch", raw, sign(raw))
    delivery_id = response.json()["delivery_id"]
    assert await pipe.wait_status(delivery_id, "dead") == "dead"  # element 1: no such state
    assert await _emails(pipe) == ["a@example.com"]
    (tmp_path / "m" / "batch.yaml").write_text(_fixed(text))
    assert pipe.runtime.mappings.reload()
    assert await deliveries.enqueue_again(pipe.redis, delivery_id, 60)
    assert await pipe.wait_status(delivery_id, "delivered", "dead") == "delivered"


async def test_a_replay_after_each_changed_delivers_every_element(redis_url: str, tmp_path: Path) -> None:
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": EACH}, BRIDGE_RETRY_MAX_ATTEMPTS=1) as pipe:
        await _replay_after_the_fix(pipe, tmp_path, EACH)
        # By position, index 0 (now element 1) was taken as done: element 1 never went.
        assert await _emails(pipe) == ["a@example.com", "b@example.com"]


async def test_a_replay_after_each_changed_creates_no_lead_twice(redis_url: str, tmp_path: Path) -> None:
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": CREATES}, BRIDGE_RETRY_MAX_ATTEMPTS=1) as pipe:
        await _replay_after_the_fix(pipe, tmp_path, CREATES)
        # By position, element 0 went again under index 1's unused key: a second lead for it.
        assert await _emails(pipe) == ["a@example.com", "b@example.com"]


async def _stored_then_worked(
    redis_url: str, tmp_path: Path, *, by_element: bool, done_as: str | None
) -> list[str]:
    """A two-element delivery stored with the worker stopped, then, as an earlier run could have
    left it, marked (or not) as going by element and its element 0 recorded done as `done_as`;
    the e-mails delivered once a worker has run it."""
    items = [{"id": 1, "email": "a@example.com"}, {"id": 2, "email": "b@example.com"}]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": _fixed(EACH)}, worker=False) as pipe:
        raw = orjson.dumps({"items": items})
        delivery_id = (await pipe.post("batch", raw, sign(raw))).json()["delivery_id"]
        stored = await pipe.redis.hget(keys.delivery(delivery_id), deliveries.BY_ELEMENT)
        assert stored == b"element"  # as ingest marks every delivery now
        if not by_element:
            await pipe.redis.hdel(keys.delivery(delivery_id), deliveries.BY_ELEMENT)
        if done_as is not None:
            await pipe.redis.hset(keys.done(delivery_id), done_as, "entry-of-an-earlier-run")
        await pipe.runtime.start_worker()
        assert await pipe.wait_status(delivery_id, "delivered", "dead") == "delivered"
        return await _emails(pipe)


async def test_a_delivery_stored_before_element_ids_goes_by_position(redis_url: str, tmp_path: Path) -> None:
    # Its earlier run, by position, recorded element 0 done as "0": not sent again.
    assert await _stored_then_worked(redis_url, tmp_path, by_element=False, done_as="0") == ["b@example.com"]


async def test_a_done_record_by_position_keeps_a_marked_delivery_by_position(
    redis_url: str, tmp_path: Path
) -> None:
    # Marked at ingest, but run first by a worker that went by position (a rolling upgrade).
    assert await _stored_then_worked(redis_url, tmp_path, by_element=True, done_as="0") == ["b@example.com"]


async def test_a_marked_delivery_goes_by_element(redis_url: str, tmp_path: Path) -> None:
    first = element_ids([{"id": 1, "email": "a@example.com"}])[0]
    assert await _stored_then_worked(redis_url, tmp_path, by_element=True, done_as=first) == ["b@example.com"]


def _command(index: int, element: str | None) -> LeadCommand:
    return LeadCommand(mapping="m", index=index, action="create", table="t", link="m", element=element)


def test_the_slot_is_the_element_only_for_a_delivery_that_goes_by_element() -> None:
    record = DeliveryRecord(id="d", mapping="m", provider="p", event_id="e", received_at=0, status="queued")
    assert slot(record, _command(3, "eabc")) == "3"
    record.by_element = True
    assert slot(record, _command(3, "eabc")) == "eabc"
    assert slot(record, _command(0, None)) == "0"  # a mapping without `each`


async def test_a_marked_delivery_whose_first_try_went_by_position_goes_on_by_position(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rolling upgrade: ingest marks the delivery, a worker of the earlier version takes its
    # first try (by position) and sends element 0's create, whose answer is lost: nothing on
    # record as done, only the pin under its position's key. The retry, on a new worker, must
    # send it under that key again (the upstream replays), not under the element's (a second lead).
    def by_position_first(record: DeliveryRecord, command: LeadCommand) -> str:
        return str(command.index) if record.attempts == 0 else slot(record, command)

    monkeypatch.setattr(worker, "slot", by_position_first)
    items = [{"email": "a@example.com"}, {"email": "b@example.com"}]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": CREATES}, BRIDGE_RETRY_BASE_S=0.05) as pipe:
        await pipe.set_faults(lost_response_rate=1.0, timeout_s=0.5)
        raw = orjson.dumps({"items": items})
        delivery_id = (await pipe.post("batch", raw, sign(raw))).json()["delivery_id"]
        await until(pipe.entries)
        await pipe.set_faults()
        assert await pipe.wait_status(delivery_id, "delivered", "dead") == "delivered"
        assert await _emails(pipe) == ["a@example.com", "b@example.com"]
