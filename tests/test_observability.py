"""Metrics, logs and readiness, as an operator sees them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline as RedisPipeline
from redis.exceptions import RedisError, ResponseError
from starlette.routing import Route

from bridge.app import create_app
from bridge.http.responses import queue_reply_handler
from bridge.logs import JSONFormatter
from bridge.queue import deliveries
from bridge.queue.embedded import EmbeddedValkey
from bridge.settings import Settings
from tests.delivery_support import env, leadbridge
from tests.pipeline import Pipeline, pipeline, sign
from tests.servers import until


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in exposition text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = ",".join(sorted(p for p in (match.group(2) or "").split(",") if p))
        if found == wanted:
            return float(match.group(3))
    return 0.0


async def test_metrics_count_every_outcome(pipe: Pipeline) -> None:
    raw = orjson.dumps({"data": {"email": "m@example.com", "first_name": "M"}})
    headers = sign(raw, msg_id="msg_metrics")
    first = await pipe.post("contact", raw, headers)
    await pipe.post("contact", raw, headers)  # duplicate
    await pipe.post("contact", raw, dict(headers, **{"webhook-signature": "v1,AAAA"}))  # unauthorized
    bad = b"{not json"
    await pipe.post("contact", bad, sign(bad))  # invalid
    await pipe.http.post(
        f"{pipe.url}/hooks/contact", content=b"x" * (pipe.runtime.settings.max_body_bytes + 1)
    )  # too_large
    await pipe.wait_status(first.json()["delivery_id"], "delivered")

    async def drained() -> str | None:
        # The job leaves the queue a moment after its delivery is marked delivered.
        text = (await pipe.http.get(f"{pipe.url}/metrics")).text
        return text if "leadbridge_queue_depth 0.0" in text else None

    text = await until(drained)
    for outcome in ("accepted", "duplicate", "unauthorized", "invalid", "too_large"):
        assert _sample(text, "leadbridge_webhooks_total", mapping="contact", outcome=outcome) == 1, outcome
    assert (
        _sample(text, "leadbridge_commands_total", mapping="contact", action="upsert", outcome="created") == 1
    )
    assert _sample(text, "leadbridge_upstream_request_seconds_count", method="POST", status="201") == 1
    assert _sample(text, "leadbridge_signature_failures_total", mapping="contact") == 1
    assert _sample(text, "leadbridge_ingest_seconds_count", mapping="contact") == 2
    assert "leadbridge_queue_depth 0.0" in text
    assert "leadbridge_dlq_size 0.0" in text


async def test_metric_labels_carry_no_payload_values(pipe: Pipeline) -> None:
    await pipe.post("does-not-exist-ada@example.com", b"{}", {})
    text = (await pipe.http.get(f"{pipe.url}/metrics")).text
    assert "ada@example.com" not in text
    assert _sample(text, "leadbridge_webhooks_total", mapping="_unknown", outcome="not_found") == 1


async def test_logs_carry_ids_and_no_lead_values_or_secrets(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    markers = {"email": "marker.ada.lovelace@example.org", "first_name": "Zebulon-Marker"}
    raw = orjson.dumps({"data": markers})
    response = await pipe.post("contact", raw, sign(raw))
    delivery_id = response.json()["delivery_id"]
    await pipe.wait_status(delivery_id, "delivered")
    await pipe.post("contact", raw, dict(sign(raw), **{"webhook-signature": "v1,AAAA"}))
    formatter = JSONFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    joined = "\n".join(lines)
    assert delivery_id in joined
    for value in (*markers.values(), "test-secret-key", "sandbox-key"):
        assert value not in joined
    parsed = [orjson.loads(line) for line in lines]
    accepted = [p for p in parsed if p["msg"] == "webhook accepted"]
    assert accepted
    assert accepted[0]["mapping"] == "contact"
    assert "duration_ms" in accepted[0]


@asynccontextmanager
async def _own_queue(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedValkey, Pipeline]]:
    """A pipeline (no worker, admin token `admin-tok`) on a Valkey of its own, which the test may
    stop or reconfigure."""
    server = EmbeddedValkey(tmp_path / "own").start()
    try:
        async with pipeline(
            server.url, tmp_path / "mappings", worker=False, BRIDGE_ADMIN_TOKEN="admin-tok"
        ) as pipe:
            yield server, pipe
    finally:
        server.stop()


async def test_readiness_flips_when_the_queue_stops(tmp_path: Path) -> None:
    async with _own_queue(tmp_path) as (server, pipe):
        assert (await pipe.http.get(f"{pipe.url}/readyz")).status_code == 200
        server.stop()

        async def not_ready() -> bool:
            return (await pipe.http.get(f"{pipe.url}/readyz")).status_code == 503

        await until(not_ready, timeout_s=15)
        raw = orjson.dumps({"data": {"email": "x@example.com"}})
        refused = await pipe.post("contact", raw, sign(raw))
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        # The admin routes too: the queue is unavailable, not a server error.
        token = {"authorization": "Bearer admin-tok"}
        admin = await pipe.http.get(f"{pipe.url}/admin/dlq", headers=token)
        assert admin.status_code == 503
        assert admin.json() == {"status": "error", "error": "queue unavailable; retry later"}
        assert admin.headers["retry-after"]
        assert (await pipe.http.get(f"{pipe.url}/healthz")).status_code == 200
        server.start()

        async def ready() -> bool:
            return (await pipe.http.get(f"{pipe.url}/readyz")).status_code == 200

        await until(ready, timeout_s=15)
        again = await pipe.post("contact", raw, sign(raw))
        assert again.status_code == 202


async def test_admin_reads_of_a_queue_that_cannot_serve_now_are_a_503(tmp_path: Path) -> None:
    # Error replies redis-py raises as a bare ResponseError: a replica cut off from its primary
    # with stale reads off (MASTERDOWN), a script running past busy-reply-threshold (BUSY).
    async with _own_queue(tmp_path) as (server, pipe):
        listing = f"{pipe.url}/admin/dlq"
        token = {"authorization": "Bearer admin-tok"}

        async def answer() -> httpx.Response:
            return await pipe.http.get(listing, headers=token)

        assert (await answer()).status_code == 200
        await pipe.redis.config_set("replica-serve-stale-data", "no")
        await pipe.redis.execute_command("REPLICAOF", "127.0.0.1", "1")
        try:
            refused = await answer()
            assert refused.status_code == 503, refused.text
            assert refused.json() == {"status": "error", "error": "queue unavailable; retry later"}
        finally:
            await pipe.redis.execute_command("REPLICAOF", "NO", "ONE")
        await pipe.redis.config_set("busy-reply-threshold", "10")
        blocker = Redis.from_url(server.url)
        looping = asyncio.ensure_future(blocker.eval("while true do end", 0))
        try:

            async def busy() -> httpx.Response | None:
                found = await answer()
                return found if found.status_code != 200 else None

            refused = await until(busy)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"]
        finally:
            await until(lambda: _killed(pipe.redis))
            with contextlib.suppress(RedisError):
                await looping
            await blocker.aclose()
        assert (await answer()).status_code == 200


async def test_another_refusal_of_the_queue_stays_a_server_error() -> None:
    wrong = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    with pytest.raises(ResponseError):  # a bug of ours: a 500, its stack logged
        await queue_reply_handler(None, wrong)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "reply",
    [
        "BUSY Valkey is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "NOREPLICAS Not enough good replicas to write.",
    ],
)
async def test_a_pipelined_command_the_queue_cannot_serve_now_is_a_503_too(reply: str) -> None:
    # redis-py prefixes the reply of a pipeline's command with that command: `dlq_ids`, `purge`
    # and the ordering's `leave_all` go by pipeline, and the server may turn BUSY between two
    # round trips of one request.
    refused = ResponseError(reply)
    RedisPipeline.annotate_exception(None, refused, 1, ("EXISTS", "lb:d:x"))  # type: ignore[arg-type]
    assert not str(refused).startswith(reply[:4])
    answer = await queue_reply_handler(None, refused)  # type: ignore[arg-type]
    assert answer.status_code == 503
    assert answer.headers["retry-after"]
    wrong = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    RedisPipeline.annotate_exception(None, wrong, 1, ("EXISTS", "lb:d:BUSY x"))  # type: ignore[arg-type]
    with pytest.raises(ResponseError):
        await queue_reply_handler(None, wrong)  # type: ignore[arg-type]


async def test_another_refusal_under_a_route_is_the_usual_500_with_its_stack_logged() -> None:
    async def refused(request: object) -> None:
        raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    app = create_app(Settings(), runtime=object())  # type: ignore[arg-type]
    app.router.routes.append(Route("/refused", refused))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        answer = await client.get("/refused")
    assert answer.status_code == 500
    # Raised on past Starlette's ServerErrorMiddleware: the server (uvicorn) logs it with its stack.
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await httpx.ASGITransport(app=app).handle_async_request(httpx.Request("GET", "http://bridge/refused"))


async def _killed(redis: Redis) -> bool:
    try:
        await redis.script_kill()
    except RedisError as exc:
        return "NOTBUSY" in str(exc)  # nothing (left) to kill
    return True


async def test_admin_writes_refused_by_the_queue_are_a_503_not_a_500(tmp_path: Path) -> None:
    # The queue answers, but takes no write: a replica after a failover whose clients still talk
    # to it (READONLY), or one at its maxmemory (OOM). A webhook is a 503 then (not stored; the
    # provider retries), and so must a replay or a purge be: the queue is unavailable, not the
    # bridge broken (a text/plain 500 that the OpenAPI document does not describe).
    async with _own_queue(tmp_path) as (server, pipe):
        raw = orjson.dumps({"data": {"email": "ro@example.com"}})
        delivery_id = (await pipe.post("contact", raw, sign(raw))).json()["delivery_id"]
        await deliveries.dead_letter(pipe.redis, delivery_id, "upstream said 400", None, 600)
        token = {"authorization": "Bearer admin-tok"}
        replay = f"{pipe.url}/admin/dlq/{delivery_id}/replay"
        purge = f"{pipe.url}/admin/dlq/{delivery_id}"
        for refuse, undo, methods in (
            (("REPLICAOF", "127.0.0.1", "1"), ("REPLICAOF", "NO", "ONE"), ("POST", "DELETE")),
            # (a purge only deletes: Valkey takes it at maxmemory)
            (("CONFIG", "SET", "maxmemory", "1"), ("CONFIG", "SET", "maxmemory", "0"), ("POST",)),
        ):
            await pipe.redis.execute_command(*refuse)
            try:
                assert (await pipe.post("contact", raw, sign(raw))).status_code == 503
                for method in methods:
                    url = replay if method == "POST" else purge
                    answer = await pipe.http.request(method, url, headers=token)
                    assert answer.status_code == 503, (refuse, answer.text)
                    assert answer.json() == {"status": "error", "error": "queue unavailable; retry later"}
                    assert answer.headers["retry-after"]
                # The command line too: reached, but refused (not "cannot reach the queue").
                cli = env(REDIS_URL=server.url)
                code, _, err = await leadbridge("dlq", "replay", delivery_id, environ=cli)
                assert code == 1
                assert "the queue refused the command" in err, err
            finally:
                await pipe.redis.execute_command(*undo)
        assert (await pipe.http.post(replay, headers=token)).status_code == 202
