"""A slow `enrich` source (a third party) must not open the Connect API's circuit breaker.
Had enrich fetches shared the upstream client's connection pool, a Connect call waiting for a
connection held by an enrich fetch would time out in the pool, counted as the upstream being
down. Supported setting: BRIDGE_WORKER_CONCURRENCY above BRIDGE_UPSTREAM_MAX_CONNECTIONS
("more would only wait for a connection", README)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.queue import circuit
from tests.pipeline import pipeline
from tests.servers import serve, until

REPO = Path(__file__).resolve().parent.parent
PAYLOADS = REPO / "tests" / "fixtures" / "payloads"
SECRET = "meta-test-app-secret"


async def test_a_slow_enrich_source_does_not_open_the_connect_breaker(redis_url: str, tmp_path: Path) -> None:
    record = orjson.loads((PAYLOADS / "meta-lead-ads-form.enrich.json").read_bytes())

    async def lead(request: Request) -> Response:
        await asyncio.sleep(1.5)  # slow, but within the mapping's enrich timeout (10 s)
        return JSONResponse(dict(record, id=request.path_params["lead_id"]))

    graph = Starlette(routes=[Route("/v21.0/{lead_id}", lead)])
    template = orjson.loads((PAYLOADS / "meta-lead-ads-form.json").read_bytes())
    async with serve(graph) as graph_url:
        environ = {
            "META_APP_SECRET": SECRET,
            "META_VERIFY_TOKEN": "v",
            "META_GRAPH_URL": f"{graph_url}/v21.0",
            "META_PAGE_TOKEN": "t",
        }
        files = {"meta.yaml": (REPO / "mappings" / "meta-lead-ads-form.yaml").read_text()}
        async with pipeline(
            redis_url,
            tmp_path / "m",
            mapping_files=files,
            environ=environ,
            BRIDGE_UPSTREAM_MAX_CONNECTIONS=2,
            BRIDGE_WORKER_CONCURRENCY=16,
            BRIDGE_UPSTREAM_TIMEOUT_S=1,
            BRIDGE_CIRCUIT_MIN_CALLS=4,
        ) as pipe:
            ids = []
            for n in range(16):
                payload = orjson.loads(orjson.dumps(template))
                payload["entry"][0]["changes"][0]["value"]["leadgen_id"] = str(1000 + n)
                body = orjson.dumps(payload)
                sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                headers = {"content-type": "application/json", "x-hub-signature-256": sig}
                ids.append((await pipe.post("meta-lead-ads-form", body, headers)).json()["delivery_id"])
            states: set[str | None] = set()

            async def all_delivered() -> bool:
                states.add(await circuit.read_state(pipe.redis))  # watched all along the way
                return all([await pipe.delivery_status(i) == "delivered" for i in ids])

            await until(all_delivered, timeout_s=60, interval_s=0.05)
            assert "open" not in states, "the Connect breaker opened while the Connect API was healthy"
