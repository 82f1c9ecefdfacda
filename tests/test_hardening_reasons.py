"""With encryption at rest on, an upstream refusal that quotes a lead value (a real API's
validation message) is not stored in clear: the dead letter's reason and its attempt history are
sealed like its payload (docs/security.md)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge.queue import arq_adapter, deliveries
from tests.pipeline import pipeline
from tests.servers import until
from tests.test_hardening_leaks import redis_dump

EMAIL = "yolanthe.marker.91ab@example.org"


async def refuse(request: Request) -> JSONResponse:
    # A real API's validation message, quoting the value it refuses.
    body = orjson.loads(await request.body())
    return JSONResponse({"message": f"data.email: {body['data']['email']} is not deliverable"}, 400)


async def test_an_upstream_message_quoting_a_lead_value_is_not_stored_in_clear(
    redis_url: str, tmp_path: Path
) -> None:
    sealing = {"BRIDGE_ENCRYPTION_KEYS": base64.b64encode(os.urandom(32)).decode()}
    refusing = [Route("/connect/table_entries", refuse, methods=["POST"])]
    async with pipeline(redis_url, tmp_path / "m", upstream_routes=refusing, **sealing) as pipe:
        runtime = pipe.runtime
        accepted = await pipe.send_signed({"type": "contact.submitted", "data": {"email": EMAIL}})
        assert accepted.status_code == 202
        delivery_id = accepted.json()["delivery_id"]

        async def dead() -> bool:
            return await deliveries.status_of(runtime.redis, delivery_id) == "dead"

        await until(dead)

        async def job_ended() -> bool:
            return not await runtime.redis.exists(arq_adapter.in_progress_key(delivery_id))

        await until(job_ended)
        # The operator (with the keys) still reads the upstream's message.
        record = await deliveries.load(runtime.redis, delivery_id, keyring=runtime.keyring)
        assert record is not None
        assert record.reason is not None
        assert EMAIL in record.reason
        # Whoever reads Redis (or its AOF, a backup) without the keys does not.
        dump = await redis_dump(runtime.redis)
        leaks = sorted({key.decode() for key, value in dump if EMAIL.encode() in value})
        assert leaks == []
