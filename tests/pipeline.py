"""A whole leadbridge pipeline for tests: the sandbox and the web app over real loopback HTTP,
a real Valkey, and a real arq worker in the test's event loop."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from bridge.app import create_app
from bridge.queue import deliveries
from bridge.runtime import Runtime
from bridge.sandbox import DEMO_API_KEY, DEMO_TABLE_ID, create_sandbox_app
from bridge.settings import Settings
from tests.servers import serve, until

SECRET_KEY = b"test-secret-key-0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()

CONTACT_MAPPING = f"""\
version: 1
name: contact
provider: standard-webhooks
verify:
  secret: ${{CONTACT_SECRET}}
table: {DEMO_TABLE_ID}
action: upsert
key: data.email
lead:
  data:
    email: data.email
    first_name: data.first_name
"""


def sign(
    body: bytes, msg_id: str | None = None, timestamp: int | None = None, key: bytes = SECRET_KEY
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


@dataclass
class Pipeline:
    url: str
    sandbox_url: str
    sandbox: Any  # SandboxState
    runtime: Runtime
    redis: Redis
    http: httpx.AsyncClient

    async def post(self, name: str, body: bytes | dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        return await self.http.post(f"{self.url}/hooks/{name}", content=raw, headers=headers)

    async def send_signed(self, payload: dict[str, Any], msg_id: str | None = None) -> httpx.Response:
        raw = orjson.dumps(payload)
        return await self.post("contact", raw, sign(raw, msg_id))

    async def entries(self) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.sandbox_url}/sandbox/entries")
        data = response.json()
        return list(data["entries"] if isinstance(data, dict) else data)

    async def events(self) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.sandbox_url}/sandbox/events")
        return list(response.json()["events"])

    async def set_faults(self, **faults: Any) -> None:
        response = await self.http.put(f"{self.sandbox_url}/sandbox/faults", json=faults)
        assert response.status_code == 200, response.text

    async def delivery_status(self, delivery_id: str) -> str | None:
        return await deliveries.status_of(self.redis, delivery_id)

    async def wait_status(self, delivery_id: str, *statuses: str, timeout_s: float = 10) -> str:
        async def check() -> str | None:
            status = await self.delivery_status(delivery_id)
            return status if status in statuses else None

        result: str = await until(check, timeout_s=timeout_s)
        return result


def test_settings(mappings: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "BRIDGE_MAPPINGS": mappings,
        "BRIDGE_RETRY_BASE_S": 0.02,
        "BRIDGE_RETRY_MAX_DELAY_S": 0.2,
        "BRIDGE_LINK_WAIT_S": 5,
        "BRIDGE_UPSTREAM_TIMEOUT_S": 2,
        "BRIDGE_TABLE_CACHE_TTL_S": 60,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def pipeline(
    redis_url: str,
    mappings_dir: Path,
    *,
    mapping_files: dict[str, str] | None = None,
    environ: dict[str, str] | None = None,
    worker: bool = True,
    upstream_routes: Sequence[BaseRoute] = (),
    **overrides: Any,
) -> AsyncIterator[Pipeline]:
    """Sandbox, runtime (web and, with `worker`, worker) and web server on loopback.
    `upstream_routes` answer before the sandbox's own (an upstream that misbehaves its way)."""
    files = mapping_files if mapping_files is not None else {"contact.yaml": CONTACT_MAPPING}
    mappings_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (mappings_dir / name).write_text(text)
    settings = test_settings(mappings_dir, **overrides)
    sandbox_app = create_sandbox_app(DEMO_API_KEY)
    async with AsyncExitStack() as stack:
        upstream = Starlette(routes=[*upstream_routes, Mount("/", sandbox_app)]) if upstream_routes else None
        sandbox_url = await stack.enter_async_context(serve(upstream or sandbox_app))
        runtime = Runtime(
            settings,
            redis_url=redis_url,
            environ=environ if environ is not None else {"CONTACT_SECRET": SECRET},
            upstream=(sandbox_url, DEMO_API_KEY),
        )
        stack.push_async_callback(runtime.close)
        runtime.load_mappings()
        if worker:
            await runtime.start_worker()
        url = await stack.enter_async_context(serve(create_app(settings, runtime=runtime)))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        yield Pipeline(url, sandbox_url, sandbox_app.state.sandbox, runtime, runtime.redis, http)
