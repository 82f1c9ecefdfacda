"""With `each`, a command that fails for good (the mapping cannot map its element, an enrich
source refuses its record, the upstream refuses its body) does not hold up the others: they are
delivered, and the delivery is then dead-lettered with a reason per failed command. A later
command for the record of a failed one is held back (never sent ahead of it). A replay sends only
what did not go: the failed commands, and those held behind them, in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bridge.queue import deliveries
from bridge.worker import Failures
from tests.pipeline import Pipeline, sign
from tests.test_delivery_each_reorder import EACH, _emails
from tests.test_semantics import _pipeline

BATCH = EACH  # upsert by `id`, `state: state`, `email: email`
FIXED = BATCH.replace("  state: state\n", "")  # the repair: no state from the payload
REFUSED = FIXED + "  appointment_type: appt\n"  # a number: the upstream refuses it (400)
WENT = "commands failed for good (the others went through)"


async def _post(pipe: Pipeline, items: list[dict[str, Any]]) -> str:
    raw = orjson.dumps({"items": items})
    response = await pipe.post("batch", raw, sign(raw))
    assert response.status_code == 202, response.text
    return str(response.json()["delivery_id"])


async def _dead(pipe: Pipeline, delivery_id: str) -> deliveries.DeliveryRecord:
    assert await pipe.wait_status(delivery_id, "dead", "delivered") == "dead"
    record = await deliveries.load(pipe.redis, delivery_id)
    assert record is not None
    return record


async def _added(pipe: Pipeline) -> int:
    return [e["type"] for e in await pipe.events()].count("table.entry.added")


async def _replay_fixed(pipe: Pipeline, tmp_path: Path, delivery_id: str, text: str = FIXED) -> str:
    (tmp_path / "m" / "batch.yaml").write_text(text)
    assert pipe.runtime.mappings.reload()
    assert await deliveries.enqueue_again(pipe.redis, delivery_id, 60)
    return await pipe.wait_status(delivery_id, "delivered", "dead")


async def test_one_element_the_mapping_cannot_map_does_not_hold_up_the_rest(
    redis_url: str, tmp_path: Path
) -> None:
    items = [
        {"id": 1, "email": "a@example.com"},
        {"id": 2, "email": "b@example.com", "state": "No such state"},
        {"id": 3, "email": "c@example.com"},
    ]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": BATCH}) as pipe:
        delivery_id = await _post(pipe, items)
        record = await _dead(pipe, delivery_id)
        assert await _emails(pipe) == ["a@example.com", "c@example.com"]  # element 2 held up nothing
        assert record.reason is not None
        assert record.reason.startswith(f"1 of 3 {WENT}: command 1: ")
        assert "mapping error: " in record.reason
        assert "b@example.com" not in record.reason
        assert record.failed_command is not None
        assert record.failed_command["index"] == 1
        # The replay, after the fix, sends element 1 alone: nothing created twice.
        assert await _replay_fixed(pipe, tmp_path, delivery_id) == "delivered"
        assert await _emails(pipe) == ["a@example.com", "b@example.com", "c@example.com"]
        assert await _added(pipe) == 3


async def test_a_later_command_for_a_failed_record_is_held_back_and_goes_in_order_on_replay(
    redis_url: str, tmp_path: Path
) -> None:
    items = [
        {"id": 7, "email": "old@example.com", "state": "No such state"},
        {"id": 7, "email": "new@example.com"},
        {"id": 8, "email": "h@example.com"},
    ]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": BATCH}) as pipe:
        delivery_id = await _post(pipe, items)
        record = await _dead(pipe, delivery_id)
        assert await _emails(pipe) == ["h@example.com"]  # record 7's newer event did not go first
        assert record.reason is not None
        assert record.reason.startswith("2 of 3 commands failed for good (the others went through)")
        assert "command 1: not sent: command 0, for the same record, failed" in record.reason
        assert await _replay_fixed(pipe, tmp_path, delivery_id) == "delivered"
        # Both of record 7's commands went, in their order: the newer e-mail is the one it keeps.
        assert await _emails(pipe) == ["h@example.com", "new@example.com"]
        assert await _added(pipe) == 2


async def test_an_element_the_upstream_refuses_does_not_hold_up_the_rest(
    redis_url: str, tmp_path: Path
) -> None:
    items = [{"id": 1, "email": "a@example.com", "appt": 5}, {"id": 2, "email": "b@example.com"}]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": REFUSED}, BRIDGE_RETRY_MAX_ATTEMPTS=1) as pipe:
        delivery_id = await _post(pipe, items)
        record = await _dead(pipe, delivery_id)
        assert await _emails(pipe) == ["b@example.com"]
        assert record.reason is not None
        assert record.reason.startswith("1 of 2 commands failed for good")
        assert [a.status for a in record.history] == [400]
        assert record.attempts == 1  # refused for good: no retry spent on it


async def test_once_the_upstream_refused_five_in_a_row_the_rest_of_the_batch_is_not_tried(
    redis_url: str, tmp_path: Path
) -> None:
    # A refusal of every body (here each one's appointment type) costs five calls, not one each.
    items = [{"id": n, "email": f"{n}@example.com", "appt": 5} for n in range(8)]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": REFUSED}) as pipe:
        record = await _dead(pipe, await _post(pipe, items))
        assert record.reason is not None
        assert record.reason.startswith("8 of 8 commands failed for good (none went through): command 0: ")
        assert "command 4: POST" in record.reason
        assert "command 5: not sent: the upstream refused the 5 commands before it" in record.reason
        assert "command 7: not sent: the upstream refused the 5 commands before it" in record.reason
        assert await pipe.entries() == []


async def test_a_planning_failure_is_dead_lettered_with_the_rest_delivered_and_a_replay_sends_nothing_twice(
    redis_url: str, tmp_path: Path
) -> None:
    required = FIXED.replace("    email: email\n", "    email: {path: email, required: true}\n")
    items = [{"id": 1, "email": "a@example.com"}, {"id": 2}]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": required}) as pipe:
        delivery_id = await _post(pipe, items)
        record = await _dead(pipe, delivery_id)
        assert await _emails(pipe) == ["a@example.com"]
        assert record.reason is not None
        assert record.reason.startswith(f"1 of 2 {WENT}: command 1: ")
        assert "lead.data.email" in record.reason
        events = await pipe.events()
        # Replayed unchanged: element 1 fails again, element 0 is on record as done.
        assert await _replay_fixed(pipe, tmp_path, delivery_id, required) == "dead"
        assert await pipe.events() == events


async def test_a_command_that_keeps_failing_names_the_ones_that_failed_for_good_when_it_gives_up(
    redis_url: str, tmp_path: Path
) -> None:
    items = [
        {"id": 1, "email": "a@example.com", "state": "No such state"},
        {"id": 2, "email": "b@example.com"},
    ]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": BATCH}, BRIDGE_RETRY_MAX_ATTEMPTS=1) as pipe:
        await pipe.set_faults(error_rate=1.0)
        record = await _dead(pipe, await _post(pipe, items))
        assert record.reason is not None
        assert record.reason.startswith("gave up after 1 attempts")
        assert "; 1 of 2 commands failed for good (the others went through): command 0: mapping error" in (
            record.reason
        )


def test_a_reason_spells_out_ten_failures_and_counts_the_rest() -> None:
    failed = Failures(30, "m")
    for index in range(12):
        failed.add(index, "m", None, "mapping error: key: resolved to null", "mapping", None, None)
    reason = failed.reason()
    assert reason.startswith("12 of 30 commands failed for good (the others went through): command 0: ")
    assert "command 9: " in reason
    assert "command 10: " not in reason
    assert reason.endswith("; and 2 more")
    alone = Failures(1, "m")
    alone.add(0, "m", None, "mapping error: key: resolved to null", "mapping", None, None)
    assert alone.reason() == "mapping error: key: resolved to null"  # a delivery's one command
