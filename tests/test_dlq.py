"""The dead-letter queue: what goes there and how, `leadbridge dlq` (a real subprocess beside a
running worker), the /admin routes, replay of a fixed mapping, replay twice, retention."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from bridge import dlq_cli
from bridge.queue import arq_adapter, deliveries, keys
from bridge.sandbox import DEMO_TABLE_ID
from bridge.worker import Deliverer
from tests.delivery_support import env, leadbridge
from tests.pipeline import CONTACT_MAPPING, Pipeline, pipeline, sign
from tests.servers import until

SIGNUP = f"""\
version: 1
name: signup
provider: standard-webhooks
verify: {{secret: "${{CONTACT_SECRET}}"}}
table: {DEMO_TABLE_ID}
action: upsert
key: data.email
lead:
  data:
    email: data.email
    phone: {{path: data.{{field}}, required: true}}
"""

TEAM = f"""\
version: 1
name: team
provider: standard-webhooks
verify: {{secret: "${{CONTACT_SECRET}}"}}
table: {DEMO_TABLE_ID}
action: upsert
each: data.people
key: email
lead:
  data:
    email: email
  appointment_type: {{appointment}}
"""

BROKEN_SIGNUP = SIGNUP.replace("{field}", "telephone")  # the payload calls it `phone`
FIXED_SIGNUP = SIGNUP.replace("{field}", "phone")
BROKEN_TEAM = TEAM.replace("{appointment}", "appt")  # a number: the upstream refuses it (400)
FIXED_TEAM = TEAM.replace("{appointment}", "{path: appt, then: [string]}")


async def _post(pipe: Pipeline, name: str, body: dict[str, object]) -> str:
    raw = orjson.dumps(body)
    response = await pipe.post(name, raw, sign(raw))
    assert response.status_code == 202
    return str(response.json()["delivery_id"])


async def _dead(pipe: Pipeline, delivery_id: str) -> deliveries.DeliveryRecord:
    await pipe.wait_status(delivery_id, "dead")
    record = await deliveries.load(pipe.redis, delivery_id)
    assert record is not None
    return record


def _cli_env(redis_url: str, **more: str) -> dict[str, str]:
    return env(REDIS_URL=redis_url, **more)


async def test_a_permanent_upstream_error_goes_straight_to_the_dlq_with_its_message(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.worker")
    async with pipeline(redis_url, tmp_path / "m", mapping_files={"team.yaml": BROKEN_TEAM}) as pipe:
        delivery_id = await _post(pipe, "team", {"data": {"people": [{"email": "x@example.com", "appt": 5}]}})
        record = await _dead(pipe, delivery_id)

        # The log line says which command and what the upstream answered; the reason is in the DLQ.
        # (Logged just after the dead letter is written: polled for.)
        def logged() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage() == "delivery dead-lettered"]

        await until(logged)
        found = [(r.delivery_id, r.command, r.kind, r.status) for r in logged()]  # type: ignore[attr-defined]
        assert found == [(delivery_id, 0, "upstream", 400)]
        assert record.attempts == 1  # no retries for a 400
        assert [a.status for a in record.history] == [400]
        assert record.reason == (
            "POST table_entries answered 400: interestedInAppointmentTypeId must be a string or null"
        )
        assert record.failed_command is not None
        assert record.failed_command["index"] == 0
        assert await deliveries.dlq_ids(pipe.redis) == [delivery_id]
        assert await pipe.entries() == []


async def test_replay_of_a_fixed_mapping_with_the_cli_then_replay_twice(
    redis_url: str, tmp_path: Path
) -> None:
    mappings = tmp_path / "m"
    async with pipeline(redis_url, mappings, mapping_files={"signup.yaml": BROKEN_SIGNUP}) as pipe:
        delivery_id = await _post(pipe, "signup", {"data": {"email": "s@example.com", "phone": "+4930123"}})
        record = await _dead(pipe, delivery_id)
        assert record.reason is not None
        assert record.reason.startswith("mapping error: lead.data.phone")
        assert record.attempts == 1
        cli = _cli_env(redis_url)

        code, out, _ = await leadbridge("dlq", "list", environ=cli)
        assert code == 0
        assert delivery_id in out
        assert "signup" in out
        code, out, _ = await leadbridge("dlq", "show", delivery_id, environ=cli)
        assert code == 0
        shown = orjson.loads(out)
        assert shown["reason"] == record.reason
        assert shown["status"] == "dead"
        assert "body" not in shown  # the payload is not printed

        (mappings / "signup.yaml").write_text(FIXED_SIGNUP)
        assert pipe.runtime.mappings.reload()
        code, out, _ = await leadbridge("dlq", "replay", delivery_id, environ=cli)
        assert code == 0
        assert "queued for replay" in out
        await pipe.wait_status(delivery_id, "delivered")
        assert await deliveries.dlq_ids(pipe.redis) == []
        entries = await pipe.entries()
        assert [e["data"] for e in entries] == [{"email": "s@example.com", "phone": "+4930123"}]

        code, out, err = await leadbridge("dlq", "replay", delivery_id, environ=cli)
        assert code == 1
        assert f"{delivery_id} is not in the dead-letter queue" in err
        code, out, _ = await leadbridge("dlq", "list", environ=cli)
        assert out.strip() == "the dead-letter queue is empty"
        assert len(await pipe.entries()) == 1
        assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1


@pytest.mark.parametrize("times", [1, 2])
async def test_a_replay_made_while_the_dead_letter_job_ends_is_not_lost(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, times: int
) -> None:
    # The job dead-letters the delivery, and an operator (with the mapping fixed) replays it
    # before the job has finished: the job's end must not take the replay's place in the queue.
    # Twice (a double click, `replay --all` run twice): no run of a replay is under way (the
    # claim is that of the run that just died, and the first replay is only queued), so the
    # second is absorbed by the first, as any replay of a queued one is; refusing it ("being
    # replayed right now ... if it dies again, replay it again", exit 1, 409) would be wrong.
    mappings = tmp_path / "m"
    replays: list[int] = []
    dead_letter = Deliverer._dead

    async def then_replayed(self: Deliverer, record: Any, *args: Any, **kwargs: Any) -> str:
        outcome = await dead_letter(self, record, *args, **kwargs)
        if not replays:
            (mappings / "signup.yaml").write_text(FIXED_SIGNUP)
            assert pipe.runtime.mappings.reload()
            assert await self.redis.exists(arq_adapter.in_progress_key(record.id))  # its job's end is to come
            for _ in range(times):
                replays.append(await deliveries.enqueue_again(self.redis, record.id, 60))
        return outcome

    monkeypatch.setattr(Deliverer, "_dead", then_replayed)
    async with pipeline(redis_url, mappings, mapping_files={"signup.yaml": BROKEN_SIGNUP}) as pipe:
        delivery_id = await _post(pipe, "signup", {"data": {"email": "r@example.com", "phone": "+4930123"}})
        await pipe.wait_status(delivery_id, "delivered")
        assert replays == [deliveries.QUEUED] * times
        assert await deliveries.dlq_ids(pipe.redis) == []
        assert [e["data"] for e in await pipe.entries()] == [{"email": "r@example.com", "phone": "+4930123"}]


async def test_a_replay_that_the_mapping_now_ignores_leaves_the_dlq(redis_url: str, tmp_path: Path) -> None:
    mappings = tmp_path / "m"
    async with pipeline(redis_url, mappings, mapping_files={"signup.yaml": BROKEN_SIGNUP}) as pipe:
        delivery_id = await _post(pipe, "signup", {"data": {"email": "q@example.com", "phone": "+4930123"}})
        await _dead(pipe, delivery_id)
        ignoring = FIXED_SIGNUP.replace(
            "action: upsert\n", "action: upsert\nwhen: \"data.email == 'nobody'\"\n"
        )
        (mappings / "signup.yaml").write_text(ignoring)
        assert pipe.runtime.mappings.reload()
        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 60)
        await pipe.wait_status(delivery_id, "ignored")
        assert await deliveries.dlq_ids(pipe.redis) == []
        record = await deliveries.load(pipe.redis, delivery_id)
        assert record is not None
        assert record.reason is None
        assert await pipe.entries() == []


async def test_a_replay_gets_a_whole_retry_window_again(redis_url: str, tmp_path: Path) -> None:
    # After an outage longer than the retry window, the delivery was dead-lettered; its replay
    # must be retried within a new window, not dead-lettered again on its first failure.
    async with pipeline(
        redis_url,
        tmp_path / "m",
        mapping_files={"signup.yaml": FIXED_SIGNUP},
        BRIDGE_RETRY_WINDOW_S=0.5,
        BRIDGE_RETENTION_S=60,
        BRIDGE_CIRCUIT_MIN_CALLS=10_000,  # the breaker stays closed: attempts, not deferrals
    ) as pipe:
        await pipe.set_faults(error_rate=1.0)
        delivery_id = await _post(pipe, "signup", {"data": {"email": "w@example.com", "phone": "+4930123"}})
        record = await _dead(pipe, delivery_id)
        assert record.reason is not None
        assert record.reason.startswith("gave up after")
        # the outage outlasts the window: the delivery is older than it when it is replayed
        await until(lambda: time.time() > record.received_at + 0.6)

        async def attempts() -> int:
            return int(await pipe.redis.hget(keys.delivery(delivery_id), "attempts") or 0)

        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 60)
        await until(attempts)  # the replay's first try failed (the upstream is still down)...
        await pipe.set_faults()  # ...and the next one, within its new window, goes through
        assert await pipe.wait_status(delivery_id, "delivered", "dead") == "delivered"
        replayed = await deliveries.load(pipe.redis, delivery_id)
        assert replayed is not None
        assert replayed.replayed_at is not None
        assert replayed.replayed_at > replayed.received_at


async def test_a_replay_sends_only_what_did_not_reach_the_upstream(redis_url: str, tmp_path: Path) -> None:
    mappings = tmp_path / "m"
    async with pipeline(redis_url, mappings, mapping_files={"team.yaml": BROKEN_TEAM}) as pipe:
        people = [{"email": "ok@example.com", "appt": "a1"}, {"email": "bad@example.com", "appt": 5}]
        delivery_id = await _post(pipe, "team", {"data": {"people": people}})
        record = await _dead(pipe, delivery_id)
        assert record.failed_command is not None
        assert record.failed_command["index"] == 1
        assert len(await pipe.entries()) == 1  # the first command did reach the upstream

        (mappings / "team.yaml").write_text(FIXED_TEAM)
        assert pipe.runtime.mappings.reload()
        # Two operators replay at once: one run, or the second is refused once it is delivered.
        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 60)
        await deliveries.enqueue_again(pipe.redis, delivery_id, 60)
        await pipe.wait_status(delivery_id, "delivered")
        assert not await deliveries.enqueue_again(pipe.redis, delivery_id, 60)  # not in the DLQ now

        async def queue_empty() -> bool:
            return await pipe.redis.zcard(arq_adapter.QUEUE_KEY) == 0

        await until(queue_empty)
        # A worker that died after the last command but before marking the delivery delivered:
        # the job runs again, and the record of applied commands keeps it from sending anything
        # (the upstream's own idempotency records are wiped, so a resend would show).
        pipe.sandbox.idempotency.clear()
        await pipe.redis.hset(keys.delivery(delivery_id), "status", "retrying")
        now_ms = int(time.time() * 1000)
        await pipe.redis.zadd(arq_adapter.QUEUE_KEY, {delivery_id: now_ms})
        await pipe.wait_status(delivery_id, "delivered")
        await until(queue_empty)
        entries = await pipe.entries()
        assert sorted((e["data"]["email"], e["interestedInAppointmentTypeId"]) for e in entries) == [
            ("bad@example.com", "5"),
            ("ok@example.com", "a1"),
        ]
        assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 2


async def test_cli_purge_replay_all_and_unknown_ids(redis_url: str, tmp_path: Path) -> None:
    async with pipeline(redis_url, tmp_path / "m", mapping_files={"signup.yaml": BROKEN_SIGNUP}) as pipe:
        ids = [await _post(pipe, "signup", {"data": {"email": f"{n}@example.com"}}) for n in range(3)]
        for delivery_id in ids:
            await _dead(pipe, delivery_id)
        cli = _cli_env(redis_url)

        code, _, err = await leadbridge("dlq", "show", "no-such-id", environ=cli)
        assert code == 1
        assert "no-such-id is not in the dead-letter queue" in err
        code, _, err = await leadbridge("dlq", "purge", "no-such-id", environ=cli)
        assert code == 1

        code, out, _ = await leadbridge("dlq", "purge", ids[0], environ=cli)
        assert code == 0
        assert not await pipe.redis.exists(keys.delivery(ids[0]))
        code, out, _ = await leadbridge("dlq", "replay", "--all", environ=cli)
        assert code == 0
        assert "2 deliveries queued for replay" in out
        for delivery_id in ids[1:]:  # the mapping is still broken: they die again
            await _dead(pipe, delivery_id)
        code, out, _ = await leadbridge("dlq", "purge", "--all", environ=cli)
        assert code == 0
        assert "2 deliveries purged" in out
        assert await deliveries.dlq_ids(pipe.redis) == []
        code, out, _ = await leadbridge("dlq", "list", environ=cli)
        assert out.strip() == "the dead-letter queue is empty"


async def test_cli_without_a_reachable_queue_says_so(tmp_path: Path) -> None:
    code, _out, err = await leadbridge("dlq", "list", environ=env(REDIS_URL=f"unix://{tmp_path}/none.sock"))
    assert code == 1
    assert "cannot reach the queue" in err
    assert "Traceback" not in err


async def test_retention_expires_the_delivery_and_its_dlq_entry(
    redis_url: str, tmp_path: Path, redis_client: Redis
) -> None:
    async with pipeline(
        redis_url,
        tmp_path / "m",
        mapping_files={"signup.yaml": BROKEN_SIGNUP},
        BRIDGE_RETENTION_S=2,
        BRIDGE_RETRY_WINDOW_S=1,
    ) as pipe:
        delivery_id = await _post(pipe, "signup", {"data": {"email": "r@example.com"}})
        await _dead(pipe, delivery_id)
        assert await deliveries.dlq_ids(redis_client) == [delivery_id]
        assert 0 < await redis_client.ttl(keys.delivery(delivery_id)) <= 2

        async def expired() -> bool:
            return not await redis_client.exists(keys.delivery(delivery_id), keys.done(delivery_id))

        await until(expired, timeout_s=6)
        assert await redis_client.zscore(keys.DLQ, delivery_id) is not None  # until someone lists
        assert await deliveries.dlq_ids(redis_client) == []
        assert await redis_client.zscore(keys.DLQ, delivery_id) is None
        code, out, _ = await leadbridge("dlq", "list", environ=_cli_env(redis_url))
        assert out.strip() == "the dead-letter queue is empty"
        code, _, _ = await leadbridge("dlq", "show", delivery_id, environ=_cli_env(redis_url))
        assert code == 1


async def test_dlq_size_gauge_drops_entries_past_retention(redis_client: Redis) -> None:
    await redis_client.zadd(keys.DLQ, {"old": 1000.0, "new": 9_999_999_999.0})
    assert await deliveries.dlq_size(redis_client) == 2
    assert await deliveries.dlq_size(redis_client, retention_s=60) == 1


async def test_admin_routes(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(deliveries, "LISTED", 1)  # a listing shows the oldest LISTED of them
    mappings = tmp_path / "m"
    async with pipeline(
        redis_url, mappings, mapping_files={"signup.yaml": BROKEN_SIGNUP}, BRIDGE_ADMIN_TOKEN="admin-tok"
    ) as pipe:
        auth = {"authorization": "Bearer admin-tok"}
        # One after the other: the DLQ is in order of death, and two deliveries in flight at
        # once may die in either order (the listing's "oldest" would then be `second`).
        first = await _post(pipe, "signup", {"data": {"email": "a1@example.com", "phone": "+491"}})
        await _dead(pipe, first)
        second = await _post(pipe, "signup", {"data": {"email": "a2@example.com", "phone": "+492"}})
        await _dead(pipe, second)
        http, base = pipe.http, pipe.url

        assert (await http.get(f"{base}/admin/dlq")).status_code == 401
        assert (
            await http.get(f"{base}/admin/dlq", headers={"authorization": "Bearer nope"})
        ).status_code == 401
        listing = (await http.get(f"{base}/admin/dlq", headers=auth)).json()
        assert (listing["count"], listing["total"]) == (1, 2)
        assert [i["id"] for i in listing["items"]] == [first]
        await dlq_cli._list(pipe.redis, pipe.runtime.keyring)
        shown_by_cli = capsys.readouterr().out
        assert "the oldest 1 of 2 dead letters" in shown_by_cli
        assert first in shown_by_cli
        assert second not in shown_by_cli
        shown = await http.get(f"{base}/admin/dlq/{first}", headers=auth)
        assert shown.status_code == 200
        assert shown.json()["reason"].startswith("mapping error")
        assert len(shown.json()["history"]) == 1
        assert (await http.get(f"{base}/admin/dlq/nope", headers=auth)).status_code == 404
        delivery = (await http.get(f"{base}/admin/deliveries/{first}", headers=auth)).json()
        assert delivery["status"] == "dead"
        assert (await http.get(f"{base}/admin/deliveries/nope", headers=auth)).status_code == 404

        deleted = await http.delete(f"{base}/admin/dlq/{second}", headers=auth)
        assert deleted.json() == {"status": "purged", "delivery_id": second}
        assert (await http.delete(f"{base}/admin/dlq/{second}", headers=auth)).status_code == 404

        (mappings / "signup.yaml").write_text(FIXED_SIGNUP)
        assert pipe.runtime.mappings.reload()
        replay = await http.post(f"{base}/admin/dlq/{first}/replay", headers=auth)
        assert replay.status_code == 202
        await pipe.wait_status(first, "delivered")
        assert (await http.get(f"{base}/admin/dlq", headers=auth)).json()["count"] == 0
        assert (await http.post(f"{base}/admin/dlq/{first}/replay", headers=auth)).status_code == 404
        assert [e["data"]["email"] for e in await pipe.entries()] == ["a1@example.com"]


async def test_admin_routes_are_hidden_without_a_token(pipe: Pipeline) -> None:
    for method, path in (
        ("GET", "/admin/dlq"),
        ("POST", "/admin/dlq/x/replay"),
        ("GET", "/admin/deliveries/x"),
    ):
        response = await pipe.http.request(method, f"{pipe.url}{path}", headers={"authorization": "Bearer x"})
        assert response.status_code == 404


async def test_purge_does_not_remove_a_queued_replay(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mappings = tmp_path / "m"
    async with pipeline(redis_url, mappings, mapping_files={"signup.yaml": BROKEN_SIGNUP}) as pipe:
        delivery_id = await _post(pipe, "signup", {"data": {"email": "p@example.com", "phone": "+4930"}})
        await _dead(pipe, delivery_id)
    # The mapping is fixed, the operator replays (no worker free yet), then purges "the rest".
    (mappings / "signup.yaml").write_text(FIXED_SIGNUP)
    fixed = {"signup.yaml": FIXED_SIGNUP}
    async with pipeline(redis_url, mappings, mapping_files=fixed, worker=False) as pipe:
        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 600)
        code, out, err = await leadbridge("dlq", "purge", "--all", environ=_cli_env(redis_url))
        assert code == 0, err
        assert f"{delivery_id}: is being replayed" in out, out
        assert await pipe.redis.exists(keys.delivery(delivery_id)), "the queued replay's record was purged"
    async with pipeline(redis_url, mappings, mapping_files={"signup.yaml": FIXED_SIGNUP}) as pipe:
        await pipe.wait_status(delivery_id, "delivered")
        assert [e["data"]["email"] for e in await pipe.entries()] == ["p@example.com"]
    assert "its lead is lost" not in caplog.text


async def test_purge_during_a_running_replay_leaves_no_record_without_expiry(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mappings = tmp_path / "m"
    apply_once = Deliverer._apply_once
    purged: list[str] = []

    async def purge_meanwhile(self: Deliverer, record: Any, *args: Any, **kwargs: Any) -> bool:
        if record.replayed_at is not None and not purged:
            # An operator purges (CLI or DELETE /admin/dlq/{id}) while the replay runs.
            if await deliveries.in_dlq(self.redis, record.id):
                await deliveries.purge(self.redis, record.id)
            purged.append(record.id)
        return await apply_once(self, record, *args, **kwargs)

    monkeypatch.setattr(Deliverer, "_apply_once", purge_meanwhile)
    async with pipeline(redis_url, mappings, mapping_files={"signup.yaml": BROKEN_SIGNUP}) as pipe:
        delivery_id = await _post(pipe, "signup", {"data": {"email": "q@example.com", "phone": "+4930"}})
        await _dead(pipe, delivery_id)
        (mappings / "signup.yaml").write_text(FIXED_SIGNUP)
        assert pipe.runtime.mappings.reload()
        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 600)
        await pipe.wait_status(delivery_id, "delivered")

        async def job_ended() -> bool:
            return not await pipe.redis.exists(arq_adapter.in_progress_key(delivery_id))

        await until(job_ended)
        assert purged == [delivery_id]
        # Every key of the delivery still expires (retention: payloads are personal data).
        for key in (keys.delivery(delivery_id), keys.done(delivery_id)):
            assert await pipe.redis.ttl(key) > 0, f"{key} has no expiry: {await pipe.redis.hgetall(key)}"


async def test_a_delivery_whose_mapping_is_not_loaded_yet_waits_for_it(
    redis_url: str, tmp_path: Path
) -> None:
    """A web pod can accept for a mapping that a worker does not have yet (a ConfigMap reaches
    each pod on its own delay): the worker retries, for up to BRIDGE_LINK_WAIT_S, and delivers
    it once the mapping arrives, rather than dead-lettering it at once."""
    mappings = tmp_path / "m"
    other = CONTACT_MAPPING.replace("name: contact", "name: other")
    files = {"other.yaml": other}
    async with pipeline(redis_url, mappings, mapping_files=files, worker=False, BRIDGE_LINK_WAIT_S=9) as pipe:
        (mappings / "contact.yaml").write_text(CONTACT_MAPPING)
        assert pipe.runtime.mappings.reload()  # the web pod has it...
        delivery_id = (await pipe.send_signed({"data": {"email": "m@example.com"}})).json()["delivery_id"]
        (mappings / "contact.yaml").unlink()
        assert pipe.runtime.mappings.reload()  # ...the worker (this runtime, from now on) not yet
        await pipe.runtime.start_worker()

        async def tried_twice() -> bool:
            record = await deliveries.load(pipe.redis, delivery_id)
            return record is not None and record.attempts >= 2

        await until(tried_twice)
        assert await pipe.delivery_status(delivery_id) == "retrying"
        (mappings / "contact.yaml").write_text(CONTACT_MAPPING)
        assert pipe.runtime.mappings.reload()
        await pipe.wait_status(delivery_id, "delivered")
        assert [e["data"]["email"] for e in await pipe.entries()] == ["m@example.com"]


async def test_a_delivery_whose_mapping_never_comes_is_dead_lettered_after_the_wait(
    redis_url: str, tmp_path: Path
) -> None:
    mappings = tmp_path / "m"
    other = CONTACT_MAPPING.replace("name: contact", "name: other")
    files = {"other.yaml": other, "contact.yaml": CONTACT_MAPPING}
    async with pipeline(
        redis_url, mappings, mapping_files=files, worker=False, BRIDGE_LINK_WAIT_S=0.5
    ) as pipe:
        delivery_id = (await pipe.send_signed({"data": {"email": "n@example.com"}})).json()["delivery_id"]
        (mappings / "contact.yaml").unlink()
        assert pipe.runtime.mappings.reload()
        await pipe.runtime.start_worker()
        record = await _dead(pipe, delivery_id)
        assert record.reason is not None
        assert record.reason.endswith("no mapping named 'contact' is loaded"), record.reason
        assert record.attempts >= 1


async def test_a_replay_asked_for_while_a_run_of_it_is_under_way_is_refused_not_dropped(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator replays with the mapping still broken, fixes it, and replays again while the
    # first replay's run (planned with the broken mapping) is under way. That run dies: a second
    # replay answered "queued" would be dropped with it (the job ends dead and leaves the queue),
    # reported done but never run. It is refused instead, saying why, and works once it is dead.
    mappings = tmp_path / "m"
    running, release = asyncio.Event(), asyncio.Event()
    plan = Deliverer._plan

    async def held(self: Deliverer, record: Any, *args: Any) -> Any:
        if record.replayed_at is not None and not running.is_set():
            running.set()
            await release.wait()
        return await plan(self, record, *args)

    monkeypatch.setattr(Deliverer, "_plan", held)
    async with pipeline(
        redis_url, mappings, mapping_files={"signup.yaml": BROKEN_SIGNUP}, BRIDGE_ADMIN_TOKEN="admin-tok"
    ) as pipe:
        delivery_id = await _post(pipe, "signup", {"data": {"email": "u@example.com", "phone": "+4930"}})
        await _dead(pipe, delivery_id)
        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 600) == deliveries.QUEUED
        await until(running.is_set)  # the replay runs, with the broken mapping
        (mappings / "signup.yaml").write_text(FIXED_SIGNUP)
        assert pipe.runtime.mappings.reload()

        code, out, err = await leadbridge("dlq", "replay", delivery_id, environ=_cli_env(redis_url))
        assert (code, out) == (1, ""), (code, out)
        assert f"{delivery_id} is being replayed" in err, err
        code, out, _ = await leadbridge("dlq", "replay", "--all", environ=_cli_env(redis_url))
        assert code == 0
        assert f"{delivery_id}: is being replayed" in out, out
        assert "0 deliveries queued for replay" in out, out
        auth = {"authorization": "Bearer admin-tok"}
        answer = await pipe.http.post(f"{pipe.url}/admin/dlq/{delivery_id}/replay", headers=auth)
        assert answer.status_code == 409, answer.text
        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 600) == deliveries.REPLAYING

        release.set()
        await pipe.wait_status(delivery_id, "dead")

        async def job_ended() -> bool:
            return not await pipe.redis.exists(arq_adapter.in_progress_key(delivery_id))

        await until(job_ended)
        assert await deliveries.in_dlq(pipe.redis, delivery_id)
        # Dead again: now the replay is taken, and runs with the fixed mapping.
        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 600) == deliveries.QUEUED
        await pipe.wait_status(delivery_id, "delivered")
        assert [e["data"]["email"] for e in await pipe.entries()] == ["u@example.com"]
