"""A create applied upstream whose answer was lost: its retry after a mapping reload, and the record's next
event after its delivery ended without the answer (dead-lettered, ignored by a reloaded mapping)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.queue import deliveries
from bridge.sandbox.routes import _idempotent_write
from tests.pipeline import SECRET, Pipeline, pipeline, sign
from tests.servers import until
from tests.test_semantics import SIMPLE, _only_entry, _pipeline, _send

BROKEN = SIMPLE.replace("lead:\n", "lead:\n  state: {value: NoSuchState}\n")  # a state the pool lacks


async def _lost_create(pipe: Pipeline, record_id: int) -> str:
    """Send a create for `record_id` that the upstream applies and whose answer it loses; the
    delivery id once the entry exists (its delivery still waiting for the answer, or retrying)."""
    await pipe.set_faults(lost_response_rate=1.0, timeout_s=0.5)
    raw = orjson.dumps({"id": record_id, "email": "a@example.com"})
    delivery_id: str = (await pipe.post("simple", raw, sign(raw))).json()["delivery_id"]
    await until(pipe.entries)
    await pipe.set_faults()
    return delivery_id


def _reload(pipe: Pipeline, tmp_path: Path, text: str) -> None:
    (tmp_path / "m" / "simple.yaml").write_text(text)
    assert pipe.runtime.mappings.reload()


async def _one_lead(pipe: Pipeline, email: str) -> None:
    """One entry, with the last event's data, created once."""
    entry = await _only_entry(pipe)
    assert entry["data"] == {"email": email}
    assert [e["type"] for e in await pipe.events()].count("table.entry.added") == 1


async def test_a_retry_whose_body_no_longer_builds_sends_the_body_first_sent(
    redis_url: str, tmp_path: Path
) -> None:
    # The create is applied upstream, its answer lost; before the retry the mapping is reloaded
    # with a lead state the table does not have (a mapping bug). The retry must send the body
    # pinned under its key (the docs: every later attempt sends it), learn the entry and link
    # it; dead-lettered unlinked instead, the record's next event creates a second lead.
    async with _pipeline(redis_url, tmp_path, {"simple.yaml": SIMPLE}) as pipe:
        first = await _lost_create(pipe, 91)
        _reload(pipe, tmp_path, BROKEN)
        assert await pipe.wait_status(first, "delivered", "dead") == "delivered"
        _reload(pipe, tmp_path, SIMPLE)
        await _send(pipe, "simple", {"id": 91, "email": "b@example.com"})
        await _one_lead(pipe, "b@example.com")


async def test_a_retry_that_the_reloaded_mapping_now_ignores_leaves_no_unlinked_entry(
    redis_url: str, tmp_path: Path
) -> None:
    # The create is applied upstream, its answer lost; before the retry the mapping is reloaded
    # with a `when` that now leaves the delivery out (or a field that is now `required` and
    # null: dead-lettered at planning). The delivery ends without linking the entry its create
    # made, and the record's next event creates a second lead.
    async with _pipeline(redis_url, tmp_path, {"simple.yaml": SIMPLE}) as pipe:
        first = await _lost_create(pipe, 92)
        _reload(pipe, tmp_path, SIMPLE.replace("key: id\n", "key: id\nwhen: \"email != 'a@example.com'\"\n"))
        await pipe.wait_status(first, "ignored", "delivered", "dead")
        await _send(pipe, "simple", {"id": 92, "email": "b@example.com"})
        await _one_lead(pipe, "b@example.com")


async def test_a_create_dead_lettered_without_its_answer_is_adopted_by_the_records_next_event(
    redis_url: str, tmp_path: Path
) -> None:
    # The create is applied upstream, its answer lost, and the delivery gives up (here after its
    # one attempt) without learning the entry. The record's next event must not create a second
    # lead: it sends the dead delivery's create again under its key, which the upstream answers
    # with the entry it made, links that, and patches it. A replay of the dead one then patches.
    async with _pipeline(redis_url, tmp_path, {"simple.yaml": SIMPLE}, BRIDGE_RETRY_MAX_ATTEMPTS=1) as pipe:
        first = await _lost_create(pipe, 93)
        assert await pipe.wait_status(first, "dead") == "dead"
        await _send(pipe, "simple", {"id": 93, "email": "b@example.com"})
        await _one_lead(pipe, "b@example.com")

        assert await deliveries.enqueue_again(pipe.redis, first, 60)
        await pipe.wait_status(first, "delivered")
        await _one_lead(pipe, "a@example.com")  # the replay patched the one lead


async def test_a_create_sent_after_a_forgotten_doubt_is_itself_in_doubt(
    redis_url: str, tmp_path: Path
) -> None:
    # The record's first delivery records its create as in doubt, then never sends it (its body
    # no longer builds: dead-lettered). The next delivery finds that doubt, forgets it (nothing
    # pinned: nothing to adopt) and sends its own create, applied upstream with its answer lost,
    # then gives up. That create is in doubt too: the record's third event must adopt its entry,
    # not make a second lead.
    async with _pipeline(redis_url, tmp_path, {"simple.yaml": SIMPLE}, BRIDGE_RETRY_MAX_ATTEMPTS=1) as pipe:
        _reload(pipe, tmp_path, BROKEN)
        await _send(pipe, "simple", {"id": 94, "email": "a@example.com"}, "dead")
        _reload(pipe, tmp_path, SIMPLE)
        await pipe.set_faults(lost_response_rate=1.0, timeout_s=0.5)
        await _send(pipe, "simple", {"id": 94, "email": "b@example.com"}, "dead")
        await pipe.set_faults()
        await _send(pipe, "simple", {"id": 94, "email": "c@example.com"})
        await _one_lead(pipe, "c@example.com")


async def test_a_body_the_upstream_keeps_failing_does_not_dead_letter_the_records_next_event(
    redis_url: str, tmp_path: Path
) -> None:
    # The upstream answers 500 to one create's body every time (a value it chokes on): that
    # delivery is dead-lettered after its attempts, its create recorded in doubt. The record's
    # next event adopts it first, and gets the same 500 on every try: it must not be
    # dead-lettered for another delivery's body (the old code created its lead).
    sandbox: dict[str, Any] = {}

    async def create(request: Request) -> Response:
        if orjson.loads(await request.body())["data"].get("email") == "poison@example.com":
            return Response(b'{"message": "internal error"}', 500, media_type="application/json")
        return await _idempotent_write(request, sandbox["state"], 201, sandbox["state"].create_entry)

    async with pipeline(
        redis_url,
        tmp_path / "m",
        mapping_files={"simple.yaml": SIMPLE},
        environ={"CONTACT_SECRET": SECRET},
        upstream_routes=[Route("/connect/table_entries", create, methods=["POST"])],
        BRIDGE_RETRY_MAX_ATTEMPTS=2,
    ) as pipe:
        sandbox["state"] = pipe.sandbox
        await _send(pipe, "simple", {"id": 95, "email": "poison@example.com"}, "dead")
        await _send(pipe, "simple", {"id": 95, "email": "b@example.com"}, "delivered", "dead")
        entry = await _only_entry(pipe)
        assert entry["data"] == {"email": "b@example.com"}
