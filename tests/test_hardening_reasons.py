"""With encryption at rest on, an upstream refusal that quotes a lead value (a real API's
validation message) is not stored in clear: the dead letter's reason and its attempt history are
sealed like its payload (docs/security.md)."""

from __future__ import annotations

import base64
import os
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from bridge.app import create_app
from bridge.queue import arq_adapter, deliveries
from bridge.runtime import Runtime
from bridge.sandbox import DEMO_API_KEY, create_sandbox_app
from tests import pipeline as pipeline_support
from tests.pipeline import CONTACT_MAPPING, SECRET, sign
from tests.servers import serve, until
from tests.test_hardening_leaks import redis_dump

EMAIL = "yolanthe.marker.91ab@example.org"


async def refuse(request: Request) -> JSONResponse:
    # A real API's validation message, quoting the value it refuses.
    body = orjson.loads(await request.body())
    return JSONResponse({"message": f"data.email: {body['data']['email']} is not deliverable"}, 400)


async def test_an_upstream_message_quoting_a_lead_value_is_not_stored_in_clear(
    redis_url: str, tmp_path: Path
) -> None:
    mappings = tmp_path / "m"
    mappings.mkdir()
    (mappings / "contact.yaml").write_text(CONTACT_MAPPING)
    key = base64.b64encode(os.urandom(32)).decode()
    settings = pipeline_support.test_settings(mappings, BRIDGE_ENCRYPTION_KEYS=key)
    upstream = Starlette(
        routes=[
            Route("/connect/table_entries", refuse, methods=["POST"]),
            Mount("/", create_sandbox_app(DEMO_API_KEY)),
        ]
    )
    async with AsyncExitStack() as stack:
        upstream_url = await stack.enter_async_context(serve(upstream))
        runtime = Runtime(
            settings,
            redis_url=redis_url,
            environ={"CONTACT_SECRET": SECRET},
            upstream=(upstream_url, DEMO_API_KEY),
        )
        stack.push_async_callback(runtime.close)
        runtime.load_mappings()
        await runtime.start_worker()
        url = await stack.enter_async_context(serve(create_app(settings, runtime=runtime)))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        raw = orjson.dumps({"type": "contact.submitted", "data": {"email": EMAIL}})
        accepted = await http.post(f"{url}/hooks/contact", content=raw, headers=sign(raw))
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
