"""With `each`, a command that fails for good (the mapping cannot map its element, an enrich
source refuses its record, the upstream refuses its body) does not hold up the others: they are
delivered, and the delivery is then dead-lettered with a reason per failed command. A later
command for the record of a failed one is held back (never sent ahead of it). A replay sends only
what did not go: the failed commands, and those held behind them, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge import worker
from bridge.errors import MappingError, OrderWait, UpstreamError
from bridge.failures import Failures
from bridge.mapping.commands import ElementFailure, LeadCommand
from bridge.mapping.compiled import CompiledMapping
from bridge.queue import arq_adapter, deliveries, ordering
from tests.pipeline import SECRET, Pipeline, pipeline, sign
from tests.servers import until
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


async def test_a_replay_tries_what_the_refusal_cap_left_out_of_the_first_run(
    redis_url: str, tmp_path: Path
) -> None:
    # Refusals that recur (values the upstream will never take) must not keep the rest of the
    # batch from going, replay after replay: only a first run stops after five in a row.
    refused = [{"id": n, "email": f"{n}@example.com", "appt": 5} for n in range(5)]
    good = [{"id": n, "email": f"{n}@example.com"} for n in (5, 6)]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": REFUSED}) as pipe:
        delivery_id = await _post(pipe, refused + good)
        record = await _dead(pipe, delivery_id)
        assert record.reason is not None
        assert "command 5: not sent: the upstream refused the 5 commands before it" in record.reason
        assert await pipe.entries() == []
        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 60)
        record = await _dead(pipe, delivery_id)
        assert await _emails(pipe) == ["5@example.com", "6@example.com"]
        assert record.reason is not None
        assert record.reason.startswith(f"5 of 7 {WENT}: command 0: POST")
        assert "not sent" not in record.reason


@pytest.mark.parametrize("path", ["/connect/table_entries", "/connect/tables/{table_id}"])
async def test_an_upstream_refusing_the_table_stops_the_whole_batch(
    redis_url: str, tmp_path: Path, path: str
) -> None:
    # 403 (the key may not write this table) or 404 (no such table) to a create or a table read
    # is about the mapping's table, not one lead: one call, not one per element.
    calls: list[str] = []

    async def refused(request: Request) -> Response:
        calls.append(request.method)
        return Response(b'{"error": "forbidden"}', 403, media_type="application/json")

    items = [{"id": n, "email": f"{n}@example.com"} for n in range(4)]
    # one command's calls: its create, or its two table reads (building the body to pin, then
    # to send)
    methods = ["POST"] if path == "/connect/table_entries" else ["GET", "GET"]
    async with pipeline(
        redis_url,
        tmp_path / "m",
        mapping_files={"batch.yaml": FIXED},
        environ={"CONTACT_SECRET": SECRET},
        upstream_routes=[Route(path, refused, methods=methods[:1])],
    ) as pipe:
        record = await _dead(pipe, await _post(pipe, items))
        assert calls == methods
        assert record.reason is not None
        assert "answered 403" in record.reason
        assert "commands failed for good" not in record.reason


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
        assert "; 1 of 2 commands failed for good (before it stopped): command 0: mapping error" in (
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


# -- review: what the isolation must not break ---------------------------------------------------

CREATES = BATCH.replace("action: upsert", "action: create").replace("  state: state\n", "")


def _dead_count(pipe: Pipeline, action: str = "upsert") -> float:
    value = pipe.runtime.metrics.registry.get_sample_value(
        "leadbridge_commands_total", {"mapping": "batch", "action": action, "outcome": "dead"}
    )
    return value or 0.0


async def test_the_last_commands_end_never_marks_a_batch_delivered_when_an_earlier_one_failed(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last command's end script finishes the delivery (delivered, its arq job gone) in one
    # step: after a failed command, a worker dying before the dead letter would lose that lead.
    seen: list[str | None] = []
    dead_for = worker.Deliverer._dead_for

    async def spying(self: worker.Deliverer, record: Any, failed: Failures) -> str:
        seen.append(await deliveries.status_of(self.redis, record.id))
        seen.append("job" if await self.redis.exists(arq_adapter.in_progress_key(record.id)) else "no job")
        return await dead_for(self, record, failed)

    monkeypatch.setattr(worker.Deliverer, "_dead_for", spying)
    items = [
        {"id": 1, "email": "a@example.com", "state": "No such state"},
        {"id": 2, "email": "b@example.com"},
    ]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": BATCH}) as pipe:
        await _dead(pipe, await _post(pipe, items))
        assert await _emails(pipe) == ["b@example.com"]
        assert seen[0] != "delivered"
        assert seen[1] == "job"


@pytest.mark.parametrize(
    ("second", "starts"),
    [
        (MappingError("table t has no custom field 'f'", whole=True), "mapping error: table t has no"),
        (OrderWait("an earlier delivery for the same record goes first", defer_s=5.0), "put back for longer"),
        (RuntimeError("a bug"), "internal error (RuntimeError); see the worker log"),
        (None, "gave up after 1 attempts over "),  # ... s: the delivery took longer than BRIDGE_JOB_TIMEOUT_S
    ],
    ids=["whole", "held-too-long", "internal-error", "timed-out"],
)
async def test_a_stop_after_failures_for_good_names_them_too(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: Exception | None, starts: str
) -> None:
    # Command 0 fails for good, command 1 stops the delivery: a failure about all of it, a
    # deferral past what BRIDGE_RETENTION_S keeps, a bug, or (None) the job's time limit. The
    # dead letter names command 0 as well.
    apply_once = worker.Deliverer._apply_once
    hung = asyncio.Event()  # never set: command 1 hangs until the job's time limit cuts it

    async def failing(self: worker.Deliverer, record: Any, command: LeadCommand, *a: Any, **k: Any) -> bool:
        if command.index == 0:
            raise MappingError("lead.state: no such state")
        if command.index == 1:
            if second is None:
                await hung.wait()
            raise second or AssertionError("unreachable")
        return await apply_once(self, record, command, *a, **k)

    monkeypatch.setattr(worker.Deliverer, "_apply_once", failing)
    monkeypatch.setattr(worker.Deliverer, "_outlives_record", lambda self, record, delay_s: True)
    items = [{"id": n, "email": f"{n}@example.com"} for n in range(3)]
    limit = {"BRIDGE_JOB_TIMEOUT_S": 0.5}
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": FIXED}, **limit) as pipe:
        record = await _dead(pipe, await _post(pipe, items))
        assert record.reason is not None
        assert record.reason.startswith(starts)
        stopped = "; 1 of 3 commands failed for good (before it stopped): command 0: mapping error: "
        assert record.reason.endswith(stopped + "lead.state: no such state")
        assert _dead_count(pipe) + _dead_count(pipe, "none") == 2.0  # "none": a stop of no command


async def test_a_failure_in_a_later_run_is_named_by_its_command_among_all_of_the_batch(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Element 0 goes, element 1 waits for its record's turn (an earlier delivery of that record
    # is retrying): the next run owes element 1 alone, and it fails for good. The dead letter
    # names it as command 1 of the batch's 2, not as the bare reason of a one-command delivery.
    apply = worker.Deliverer._apply
    failing = {"on": True}

    async def earlier_fails(
        self: worker.Deliverer, record: Any, command: LeadCommand, *a: Any, **k: Any
    ) -> Any:
        if failing["on"] and command.data.get("email") == "first@example.com":
            raise UpstreamError("upstream error", retryable=True, status=500)
        return await apply(self, record, command, *a, **k)

    monkeypatch.setattr(worker.Deliverer, "_apply", earlier_fails)
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": BATCH}, BRIDGE_RETRY_BASE_S=0.05) as pipe:
        assert pipe.runtime.deliverer is not None
        pipe.runtime.deliverer.ordering._wait_s = 0.0  # a busy record: deferred at once, not awaited
        earlier = await _post(pipe, [{"id": 2, "email": "first@example.com", "state": "New"}])
        assert await pipe.wait_status(earlier, "retrying") == "retrying"
        items = [{"id": 1, "email": "a@example.com"}, {"id": 2, "email": "b@example.com", "state": "Nope"}]
        delivery_id = await _post(pipe, items)
        await until(lambda: _emails_are(pipe, ["a@example.com"]))
        failing["on"] = False
        assert await pipe.wait_status(earlier, "delivered") == "delivered"
        record = await _dead(pipe, delivery_id)
        assert record.reason is not None
        assert record.reason.startswith(f"1 of 2 {WENT}: command 1: mapping error: "), record.reason


async def _emails_are(pipe: Pipeline, emails: list[str]) -> bool:
    return await _emails(pipe) == emails


async def test_an_earlier_command_for_the_record_of_a_later_failed_element_goes(
    redis_url: str, tmp_path: Path
) -> None:
    # Only a *later* command is held behind a failed one: record 7's first event goes, its
    # second (a required field null) fails. Held too, it would wait for the mapping's fix.
    required = FIXED.replace("    email: email\n", "    email: {path: email, required: true}\n")
    items: list[dict[str, Any]] = [
        {"id": 7, "email": "a@example.com"},
        {"id": 8, "email": "b@example.com"},
        {"id": 7},
    ]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": required}) as pipe:
        record = await _dead(pipe, await _post(pipe, items))
        assert await _emails(pipe) == ["a@example.com", "b@example.com"]
        assert record.reason is not None
        assert record.reason.startswith(f"1 of 3 {WENT}: command 2: ")


def test_a_record_held_behind_its_first_failed_command_whichever_failed_first() -> None:
    # Command 5 (record k) failed planning; command 2 (record k) fails when sent: 3 is held.
    failed = Failures(6, "m", [ElementFailure(index=5, key="k", reason="r", kind="mapping")])
    command = LeadCommand(mapping="m", index=0, action="upsert", table="t", link="m", key="k")
    assert not failed.hold_back(command)  # before either failure: it goes
    failed.add(2, "m", "k", "refused", "upstream", 400, command.model_copy(update={"index": 2}))
    assert failed.hold_back(command.model_copy(update={"index": 3}))
    assert "command 3: not sent: command 2, for the same record, failed" in failed.reason()


async def test_a_held_back_first_command_does_not_keep_the_delivery_unplanned(
    redis_url: str, tmp_path: Path
) -> None:
    # Record 7's first element fails planning, its second (the first owed) is held back: the
    # delivery's registration, which goes with the first command's turn, must still be made when
    # the next command is unkeyed. Left in `unplanned`, a retrying delivery holds up every
    # record of its link group until its next try.
    required = CREATES.replace("    email: email\n", "    email: {path: email, required: true}\n")
    items: list[dict[str, Any]] = [{"id": 7}, {"id": 7, "email": "a@example.com"}, {"email": "b@example.com"}]
    async with _pipeline(
        redis_url, tmp_path, {"batch.yaml": required}, BRIDGE_RETRY_BASE_S=30, BRIDGE_RETRY_MAX_DELAY_S=60
    ) as pipe:
        await pipe.set_faults(error_rate=1.0)
        delivery_id = await _post(pipe, items)
        assert await pipe.wait_status(delivery_id, "retrying") == "retrying"
        await until(lambda: _job_idle(pipe, delivery_id))
        assert await pipe.redis.zscore(ordering.unplanned_key("batch"), delivery_id) is None


async def _job_idle(pipe: Pipeline, delivery_id: str) -> bool:
    return not await pipe.redis.exists(arq_adapter.in_progress_key(delivery_id))


async def test_a_replay_after_a_planning_failure_does_not_create_twice_what_a_by_position_run_sent(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rolling upgrade: a worker of the earlier version (by position) sent element 0's create,
    # its answer lost: only its pin under position "0" says so. The retry finds element 0 failing
    # planning (a mapping reloaded meanwhile): it must still go by position, or the replay after
    # the fix sends element 0 under its element's key, a second lead.
    original = worker.slot
    broken = {"on": False}

    def by_position_first(record: deliveries.DeliveryRecord, command: LeadCommand) -> str:
        # the earlier version's worker: the first try (a replay's attempts are 0 again)
        return str(command.index) if record.attempts == 0 and not broken["on"] else original(record, command)

    command = CompiledMapping.command

    def failing(
        self: CompiledMapping, index: int, element: Any, element_id: str | None = None
    ) -> LeadCommand:
        if broken["on"] and index == 0:
            raise MappingError("lead.data.email: required but resolved to null")
        return command(self, index, element, element_id)

    monkeypatch.setattr(worker, "slot", by_position_first)
    monkeypatch.setattr(CompiledMapping, "command", failing)
    items = [{"email": "a@example.com"}, {"email": "b@example.com"}]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": CREATES}, BRIDGE_RETRY_BASE_S=0.05) as pipe:
        await pipe.set_faults(lost_response_rate=1.0, timeout_s=1.0)
        delivery_id = await _post(pipe, items)
        await until(pipe.entries)  # element 0 created, its answer not back yet
        broken["on"] = True
        await pipe.set_faults()
        await _dead(pipe, delivery_id)
        assert await _emails(pipe) == ["a@example.com", "b@example.com"]
        broken["on"] = False
        monkeypatch.setattr(worker, "slot", original)
        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 60)
        assert await pipe.wait_status(delivery_id, "delivered", "dead") == "delivered"
        assert await _emails(pipe) == ["a@example.com", "b@example.com"]


async def test_a_create_answered_without_an_entry_id_stops_the_whole_batch(
    redis_url: str, tmp_path: Path
) -> None:
    # Not about one element: the upstream took the create (a lead made) and gave no id to link.
    # Every further create of the batch would make another lead that no record links.
    posts: list[bytes] = []

    async def no_id(request: Request) -> Response:
        posts.append(await request.body())
        return Response(b"{}", 201, media_type="application/json")

    items = [{"id": n, "email": f"{n}@example.com"} for n in range(3)]
    async with pipeline(
        redis_url,
        tmp_path / "m",
        mapping_files={"batch.yaml": FIXED},
        environ={"CONTACT_SECRET": SECRET},
        upstream_routes=[Route("/connect/table_entries", no_id, methods=["POST"])],
    ) as pipe:
        record = await _dead(pipe, await _post(pipe, items))
        assert len(posts) == 1
        assert record.reason is not None
        assert record.reason.startswith("create answered without an entry id")


async def test_a_custom_field_the_table_lacks_stops_the_whole_batch(redis_url: str, tmp_path: Path) -> None:
    # The field's name is the mapping's: every element would fail alike, each after a table
    # refresh. The first failure stops the delivery, its reason as it was before isolation.
    lacking = FIXED + "  custom_fields:\n    No Such Field: email\n"
    items = [{"id": n, "email": f"{n}@example.com"} for n in range(3)]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": lacking}) as pipe:
        record = await _dead(pipe, await _post(pipe, items))
        assert record.reason is not None
        assert record.reason.startswith("mapping error: table ")
        assert record.reason.endswith("has no custom field 'No Such Field'")
        assert record.failed_command is not None
        assert record.failed_command["index"] == 0
        assert await pipe.entries() == []


async def test_giving_up_after_permanent_failures_says_what_went_and_counts_them_dead(
    redis_url: str, tmp_path: Path
) -> None:
    items = [
        {"id": 1, "email": "a@example.com", "state": "No such state"},
        {"id": 2, "email": "b@example.com"},
        {"id": 3, "email": "c@example.com"},
    ]
    async with _pipeline(redis_url, tmp_path, {"batch.yaml": BATCH}, BRIDGE_RETRY_MAX_ATTEMPTS=1) as pipe:
        await pipe.set_faults(error_rate=1.0)
        record = await _dead(pipe, await _post(pipe, items))
        assert record.reason is not None
        assert "went through" not in record.reason  # command 1 did not, command 2 was not tried
        await until(lambda: _job_idle(pipe, record.id))  # counted after the dead letter
        assert _dead_count(pipe) == 2  # command 0 (failed for good) and command 1 (gave up)


@pytest.mark.parametrize(("status", "calls"), [(401, 1), (404, 3)])
async def test_an_enrich_source_refusing_our_token_is_not_asked_for_every_element(
    redis_url: str, tmp_path: Path, status: int, calls: int
) -> None:
    # A 401 is the source refusing the mapping's token, every record alike: the delivery stops
    # at once (docs/mappings.md). A 404 is one record's: the others are still fetched.
    from tests.test_enrich import PAYLOADS, meta_pipeline, post_meta

    payload = orjson.loads((PAYLOADS / "meta-lead-ads-form.json").read_bytes())
    change = payload["entry"][0]["changes"][0]
    payload["entry"][0]["changes"] = [
        {**change, "value": {**change["value"], "leadgen_id": str(n)}} for n in range(3)
    ]
    async with meta_pipeline(redis_url, tmp_path) as (pipe, graph):
        graph.status = status
        delivery_id = await post_meta(pipe, orjson.dumps(payload))
        assert await pipe.wait_status(delivery_id, "dead") == "dead"
        assert len(graph.calls) == calls
