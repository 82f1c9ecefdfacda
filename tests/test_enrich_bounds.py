"""`enrich` fetches within bounds: a payload value cannot move the GET to another path of the
source, an answer is read no further than `MAX_ENRICH_BYTES` (after decompression), and one
attempt ends at the mapping's `timeout_s` however slowly the source answers."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bridge.connect.client import MAX_ENRICH_BYTES, EnrichClient, build_http_client
from bridge.errors import UpstreamError
from bridge.queue import deliveries
from tests.pipeline import pipeline
from tests.servers import serve
from tests.test_enrich import PAGE_TOKEN, PAYLOADS, REPO, meta_pipeline_at, post_meta

RECORD = (PAYLOADS / "meta-lead-ads-form.enrich.json").read_bytes()


def meta_body(leadgen_id: str) -> bytes:
    payload = orjson.loads((PAYLOADS / "meta-lead-ads-form.json").read_bytes())
    payload["entry"][0]["changes"][0]["value"]["leadgen_id"] = leadgen_id
    return orjson.dumps(payload)


@pytest.mark.parametrize("leadgen_id", ["..", "."])
async def test_a_dot_segment_value_does_not_move_the_fetch(
    redis_url: str, tmp_path: Path, leadgen_id: str
) -> None:
    """`quote()` leaves dots alone and both HTTP clients remove dot segments: the webhook's
    leadgen_id ".." made the GET (with the Page token) go to the source's `/` instead of
    `/v21.0/{id}`, and whatever that answered became the lead."""
    calls: list[tuple[str, str]] = []

    async def anything(request: Request) -> Response:
        calls.append((request.url.path, request.headers.get("authorization", "")))
        return Response(RECORD, media_type="application/json")

    app = Starlette(routes=[Route("/{path:path}", anything)])
    async with serve(app) as graph_url, meta_pipeline_at(redis_url, tmp_path, graph_url) as pipe:
        delivery_id = await post_meta(pipe, meta_body(leadgen_id))
        status = await pipe.wait_status(delivery_id, "delivered", "dead")
        reason = (await pipe.redis.hget(f"lb:d:{delivery_id}", "reason") or b"").decode()
        assert calls == [], f"fetched {calls[0][0]!r} with {PAGE_TOKEN!r}"
        assert status == "dead"
        assert "enrich.url" in reason
        assert "dot segment" in reason
        assert await pipe.entries() == []


def _padded_record() -> bytes:
    """The Graph record with a filler field that takes it past MAX_ENRICH_BYTES."""
    record = orjson.loads(RECORD)
    record["filler"] = "a" * (MAX_ENRICH_BYTES + 1)
    return orjson.dumps(record)


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_an_answer_over_the_size_limit_is_dead_lettered(
    redis_url: str, tmp_path: Path, encoding: str
) -> None:
    """Read whole into memory, an endless or huge answer (or a small gzip body that inflates to
    gigabytes: httpx decodes it) grew the worker until the job's time limit or the OOM killer."""
    big = _padded_record()
    body = gzip.compress(big) if encoding == "gzip" else big
    headers = {"content-encoding": "gzip"} if encoding == "gzip" else {}
    assert len(body) < MAX_ENRICH_BYTES or encoding == "identity"

    async def lead(request: Request) -> Response:
        return Response(body, media_type="application/json", headers=headers)

    app = Starlette(routes=[Route("/v21.0/{leadgen_id}", lead)])
    async with serve(app) as graph_url, meta_pipeline_at(redis_url, tmp_path, graph_url) as pipe:
        delivery_id = await post_meta(pipe, meta_body("444444444444"))
        status = await pipe.wait_status(delivery_id, "delivered", "dead")
        reason = (await pipe.redis.hget(f"lb:d:{delivery_id}", "reason") or b"").decode()
        assert status == "dead"
        assert reason == f"enrich fetch answered more than {MAX_ENRICH_BYTES} bytes"
        assert await pipe.entries() == []


async def test_a_trickling_answer_is_cut_at_the_mappings_timeout(redis_url: str, tmp_path: Path) -> None:
    """httpx's timeout bounds each read: a source sending a byte every 0.2 s never tripped the
    mapping's `timeout_s: 1` ("time limit of one fetch attempt") and held the job for as long
    as it trickled (up to BRIDGE_JOB_TIMEOUT_S)."""

    async def slowly() -> AsyncIterator[bytes]:
        for _ in range(15):  # leading whitespace is valid JSON: the whole answer is a good record
            yield b" "
            await asyncio.sleep(0.2)  # a slow third party's pace, not a synchronisation
        yield RECORD

    async def lead(request: Request) -> Response:
        return StreamingResponse(slowly(), media_type="application/json")

    mapping = (REPO / "mappings" / "meta-lead-ads-form.yaml").read_text()
    assert "  as: record\n" in mapping
    mapping = mapping.replace("  as: record\n", "  as: record\n  timeout_s: 1\n")
    environ = {
        "META_APP_SECRET": "meta-test-app-secret",
        "META_VERIFY_TOKEN": "verify-me",
        "META_PAGE_TOKEN": PAGE_TOKEN,
    }
    app = Starlette(routes=[Route("/v21.0/{leadgen_id}", lead)])
    async with (
        serve(app) as graph_url,
        pipeline(
            redis_url,
            tmp_path / "m",
            mapping_files={"meta.yaml": mapping},
            environ={**environ, "META_GRAPH_URL": f"{graph_url}/v21.0"},
        ) as pipe,
    ):
        delivery_id = await post_meta(pipe, meta_body("444444444444"))
        status = await pipe.wait_status(delivery_id, "retrying", "delivered", "dead")
        record = await deliveries.load(pipe.redis, delivery_id)
        assert record is not None
        assert status == "retrying", record.status
        assert record.history[0].error == "enrich fetch failed: timed out"
        assert record.history[0].retryable


async def test_nesting_deeper_than_the_stack_is_not_json_to_us() -> None:
    """json.loads raises RecursionError (not ValueError) on deep nesting: the delivery was
    dead-lettered as an "internal error (RecursionError)" with a stack trace in the log."""

    async def lead(request: Request) -> Response:
        return Response(b"[" * 200_000 + b"]" * 200_000, media_type="application/json")

    app = Starlette(routes=[Route("/lead", lead)])
    async with serve(app) as url:
        http = build_http_client(timeout_s=5, max_connections=2)
        try:
            with pytest.raises(UpstreamError) as caught:
                await EnrichClient(lambda: http)(f"{url}/lead", {}, timeout_s=5)
        finally:
            await http.aclose()
    assert caught.value.message == "enrich fetch did not return JSON"
    assert not caught.value.retryable


async def test_a_retry_does_not_fetch_again_for_elements_already_delivered(
    redis_url: str, tmp_path: Path
) -> None:
    """One notification, two leads: A is created, B's create fails (503) and the delivery is
    retried. The retry planned every element again, fetching A's record once more: with A gone
    at the source by then (deleted, 404) the delivery was dead-lettered for A, which was
    delivered, and B was lost to the dead-letter queue (a replay fetches A again: 404 again)."""
    fetched: list[str] = []

    async def lead(request: Request) -> Response:
        leadgen_id = request.path_params["leadgen_id"]
        fetched.append(leadgen_id)
        if leadgen_id == "111" and fetched.count("111") > 1:
            return Response(b'{"error": {"message": "gone"}}', status_code=404)
        record = orjson.loads(RECORD)
        for field in record["field_data"]:
            if field["name"] == "email":
                field["values"] = [f"lead{leadgen_id}@example.com"]
        return Response(orjson.dumps(record), media_type="application/json")

    failed: list[bytes] = []

    async def creates(request: Request) -> Response:
        """In front of the sandbox: B's first create answers 503, all else is passed on."""
        body = await request.body()
        if b"lead222@" in body and not failed:
            failed.append(body)
            return Response(b'{"error": "busy"}', status_code=503, media_type="application/json")
        async with httpx.AsyncClient() as http:
            answer = await http.request(
                request.method,
                sandbox_url + request.url.path,
                content=body,
                headers={k: v for k, v in request.headers.items() if k != "host"},
            )
        return Response(answer.content, answer.status_code, media_type="application/json")

    payload = orjson.loads(meta_body("111"))
    second = orjson.loads(orjson.dumps(payload["entry"][0]["changes"][0]))
    second["value"]["leadgen_id"] = "222"
    payload["entry"][0]["changes"].append(second)
    graph = Starlette(routes=[Route("/v21.0/{leadgen_id}", lead)])
    proxy = Starlette(routes=[Route("/{path:path}", creates, methods=["GET", "POST", "PATCH"])])
    async with (
        serve(graph) as graph_url,
        meta_pipeline_at(redis_url, tmp_path, graph_url) as pipe,
        serve(proxy) as proxy_url,
    ):
        sandbox_url = pipe.sandbox_url
        pipe.runtime.deliverer.connect._inner._base = proxy_url  # type: ignore[attr-defined]
        delivery_id = await post_meta(pipe, orjson.dumps(payload))
        status = await pipe.wait_status(delivery_id, "delivered", "dead")
        record = await deliveries.load(pipe.redis, delivery_id)
        assert record is not None
        assert failed, "B's create never failed: the test did not test"
        assert status == "delivered", record.reason
        emails = sorted(entry["data"]["email"] for entry in await pipe.entries())
        assert emails == ["lead111@example.com", "lead222@example.com"]
        assert fetched.count("111") == 1


async def test_a_redirect_is_not_followed_with_the_secret_headers() -> None:
    """docs/mappings.md: redirects are not followed. A source's 302 to another host (or to an
    internal address) ends the fetch, permanently: the token never reaches the target."""
    reached: list[str] = []

    async def target(request: Request) -> Response:
        reached.append(request.headers.get("authorization", ""))
        return Response(RECORD, media_type="application/json")

    other = Starlette(routes=[Route("/{path:path}", target)])
    async with serve(other) as other_url:

        async def moved(request: Request) -> Response:
            return Response(status_code=302, headers={"location": f"{other_url}/internal"})

        async with serve(Starlette(routes=[Route("/lead", moved)])) as url:
            for pool in ("aiohttp", "httpx"):
                fetch = EnrichClient(
                    lambda pool=pool: build_http_client(timeout_s=5, max_connections=2, pool=pool)
                )
                try:
                    with pytest.raises(UpstreamError) as caught:
                        await fetch(f"{url}/lead", {"Authorization": "Bearer t"}, 5)
                finally:
                    await fetch.aclose()
                assert caught.value.message == "enrich fetch answered 302"
                assert not caught.value.retryable
    assert reached == []
