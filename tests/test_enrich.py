"""`enrich` through the whole pipeline: Meta Lead Ads with a local stand-in for the Graph API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.queue import circuit
from tests.pipeline import Pipeline, pipeline
from tests.servers import serve, until

REPO = Path(__file__).resolve().parent.parent
PAYLOADS = REPO / "tests" / "fixtures" / "payloads"
APP_SECRET = "meta-test-app-secret"
PAGE_TOKEN = "meta-test-page-token"


class GraphStandIn:
    """Answers GET /v21.0/{leadgen_id} like the Graph API; `status` forces failures, `delay_s`
    makes it slow."""

    def __init__(self) -> None:
        self.record = orjson.loads((PAYLOADS / "meta-lead-ads-form.enrich.json").read_bytes())
        self.status = 200
        self.delay_s = 0.0
        self.calls: list[tuple[str, str]] = []
        self.app = Starlette(routes=[Route("/v21.0/{leadgen_id}", self.lead)])

    async def lead(self, request: Request) -> Response:
        self.calls.append((request.path_params["leadgen_id"], request.headers.get("authorization", "")))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow third party, not a synchronisation
        if self.status != 200:
            return JSONResponse({"error": {"message": "nope"}}, status_code=self.status)
        return JSONResponse(dict(self.record, id=request.path_params["leadgen_id"]))


@asynccontextmanager
async def meta_pipeline_at(
    redis_url: str, tmp_path: Path, graph_url: str, **overrides: Any
) -> AsyncIterator[Pipeline]:
    """The pipeline with the shipped Meta Lead Ads mapping, its Graph API at `graph_url`."""
    environ = {
        "META_APP_SECRET": APP_SECRET,
        "META_VERIFY_TOKEN": "verify-me",
        "META_GRAPH_URL": f"{graph_url}/v21.0",
        "META_PAGE_TOKEN": PAGE_TOKEN,
    }
    files = {"meta.yaml": (REPO / "mappings" / "meta-lead-ads-form.yaml").read_text()}
    async with pipeline(redis_url, tmp_path / "m", mapping_files=files, environ=environ, **overrides) as pipe:
        yield pipe


@asynccontextmanager
async def meta_pipeline(
    redis_url: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[Pipeline, GraphStandIn]]:
    graph = GraphStandIn()
    async with (
        serve(graph.app) as graph_url,
        meta_pipeline_at(redis_url, tmp_path, graph_url, **overrides) as pipe,
    ):
        yield pipe, graph


async def post_meta(pipe: Pipeline, body: bytes) -> str:
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"content-type": "application/json", "x-hub-signature-256": signature}
    response = await pipe.post("meta-lead-ads-form", body, headers)
    assert response.status_code == 202, response.text
    return str(response.json()["delivery_id"])


async def test_thin_webhook_is_enriched_into_a_full_lead(redis_url: str, tmp_path: Path) -> None:
    async with meta_pipeline(redis_url, tmp_path) as (pipe, graph):
        delivery_id = await post_meta(pipe, (PAYLOADS / "meta-lead-ads-form.json").read_bytes())
        await pipe.wait_status(delivery_id, "delivered")
        entries = await pipe.entries()
        assert len(entries) == 1
        assert entries[0]["data"]["email"] == "ella.fitzgerald@example.com"
        assert entries[0]["data"]["phone"] == "+12127365000"
        assert graph.calls == [("444444444444", f"Bearer {PAGE_TOKEN}")]


async def test_enrich_failure_is_retried_then_succeeds(redis_url: str, tmp_path: Path) -> None:
    async with meta_pipeline(redis_url, tmp_path) as (pipe, graph):
        graph.status = 503
        delivery_id = await post_meta(pipe, (PAYLOADS / "meta-lead-ads-form.json").read_bytes())
        await until(lambda: len(graph.calls) >= 2)
        assert await pipe.entries() == []
        graph.status = 200
        await pipe.wait_status(delivery_id, "delivered")
        assert len(await pipe.entries()) == 1


@pytest.mark.parametrize("status", [404, 401])
async def test_enrich_permanent_failure_dead_letters(redis_url: str, tmp_path: Path, status: int) -> None:
    """docs/mappings.md: an enrich answer such as 404 or 401 dead-letters the delivery. A 401
    from the Connect API is retried (our key: every call would fail alike); one from a third
    party's record fetch was retried too, for the whole retry window, by the shared classify()."""
    async with meta_pipeline(redis_url, tmp_path) as (pipe, graph):
        graph.status = status
        delivery_id = await post_meta(pipe, (PAYLOADS / "meta-lead-ads-form.json").read_bytes())
        await pipe.wait_status(delivery_id, "dead")
        reason = (await pipe.redis.hget(f"lb:d:{delivery_id}", "reason")).decode()
        assert "enrich" in reason
        assert str(status) in reason
        assert PAGE_TOKEN not in reason
        assert len(graph.calls) == 1


async def test_a_slow_enrich_source_does_not_open_the_connect_breaker(redis_url: str, tmp_path: Path) -> None:
    """Enrich fetches have a pool of their own. Had they shared the Connect client's, a Connect
    call waiting for a connection held by a slow enrich fetch would time out in the pool, counted
    as the Connect API being down. Supported setting: BRIDGE_WORKER_CONCURRENCY above
    BRIDGE_UPSTREAM_MAX_CONNECTIONS ("more would only wait for a connection", README)."""
    crowded = {
        "BRIDGE_UPSTREAM_MAX_CONNECTIONS": 2,
        "BRIDGE_WORKER_CONCURRENCY": 16,
        "BRIDGE_UPSTREAM_TIMEOUT_S": 1,
        "BRIDGE_CIRCUIT_MIN_CALLS": 4,
    }
    template = orjson.loads((PAYLOADS / "meta-lead-ads-form.json").read_bytes())
    async with meta_pipeline(redis_url, tmp_path, **crowded) as (pipe, graph):
        graph.delay_s = 1.5  # slow, but within the mapping's enrich timeout (10 s)
        ids = []
        for n in range(16):
            payload = orjson.loads(orjson.dumps(template))
            payload["entry"][0]["changes"][0]["value"]["leadgen_id"] = str(1000 + n)
            ids.append(await post_meta(pipe, orjson.dumps(payload)))
        states: set[str | None] = set()

        async def all_delivered() -> bool:
            states.add(await circuit.read_state(pipe.redis))  # watched all along the way
            return all([await pipe.delivery_status(i) == "delivered" for i in ids])

        await until(all_delivered, timeout_s=60, interval_s=0.05)
        assert "open" not in states, "the Connect breaker opened while the Connect API was healthy"
