"""The baselines leadbridge is measured against: the simplest code that does the same job.

    python -m bench.baselines web-a  --port P --secret S
        (a) a bare Starlette route: read the body, check the HMAC-SHA256, parse the JSON, 200
    python -m bench.baselines web-b  --port P --secret S --redis unix:///...sock
        (b) the same plus one arq `enqueue_job` per request (arq's defaults: pickle, random job id)
    python -m bench.baselines worker-c --redis unix:///...sock --upstream http://127.0.0.1:Q
        (c) one arq worker, arq's defaults, one httpx POST per job to the Connect sandbox
    python -m bench.baselines instant --port P
        a route answering 201 `{}` at once: the server of the HTTP client micro-benchmark

(d), the naive whole pipeline, is (b) and (c) running side by side. Each web baseline runs in its
own process with one uvicorn worker configured like leadbridge's (uvloop, httptools, no access
log), so the comparison is of what happens inside the request, not of the server setup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SANDBOX_KEY = "sandbox-key"
DEMO_TABLE_ID = "2b7c9a54-3f1e-4c8a-9d6b-1a2b3c4d5e6f"


def _redis_settings(url: str) -> Any:
    from arq.connections import RedisSettings

    return RedisSettings.from_dsn(url)


def _verified_payload(body: bytes, signature: str, key: bytes) -> Any | None:
    expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def app_a(secret: str) -> Starlette:
    key = secret.encode()

    async def hook(request: Request) -> Response:
        body = await request.body()
        payload = _verified_payload(body, request.headers.get("x-signature", ""), key)
        if payload is None:
            return JSONResponse({"status": "refused"}, status_code=401)
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/hooks/{name}", hook, methods=["POST"])])


def app_b(secret: str, redis_url: str) -> Starlette:
    from arq import create_pool

    key = secret.encode()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.arq = await create_pool(_redis_settings(redis_url))
        try:
            yield
        finally:
            await app.state.arq.aclose()

    async def hook(request: Request) -> Response:
        body = await request.body()
        payload = _verified_payload(body, request.headers.get("x-signature", ""), key)
        if payload is None:
            return JSONResponse({"status": "refused"}, status_code=401)
        job = await request.app.state.arq.enqueue_job("deliver", payload)
        return JSONResponse({"status": "accepted", "job_id": job.job_id}, status_code=202)

    return Starlette(routes=[Route("/hooks/{name}", hook, methods=["POST"])], lifespan=lifespan)


def app_instant() -> Starlette:
    async def create(request: Request) -> Response:
        await request.body()
        return Response(b"{}", status_code=201, media_type="application/json")

    return Starlette(routes=[Route("/connect/table_entries", create, methods=["POST"])])


def lead_body(payload: dict[str, Any], state_id: str) -> dict[str, Any]:
    """What the naive worker sends: the contact's fields as they came, the default state."""
    contact = payload["contact"]
    return {
        "tableId": DEMO_TABLE_ID,
        "data": {
            "email": contact["email"],
            "name": f"{contact['first_name']} {contact['last_name']}",
            "phone": contact["phone"],
            "message": contact["message"],
            "campaign": payload["utm"]["campaign"],
        },
        "leadStateId": state_id,
    }


async def run_worker_c(redis_url: str, upstream: str) -> None:
    import httpx
    from arq.worker import Worker, func

    async def startup(ctx: dict[str, Any]) -> None:
        http = httpx.AsyncClient(base_url=upstream, headers={"Authorization": f"Bearer {SANDBOX_KEY}"})
        table = (await http.get(f"/connect/tables/{DEMO_TABLE_ID}")).json()
        ctx["http"] = http
        ctx["state_id"] = next(s["id"] for s in table["leadStates"] if s.get("default"))

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["http"].aclose()

    async def deliver(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        response = await ctx["http"].post(
            "/connect/table_entries",
            json=lead_body(payload, ctx["state_id"]),
            headers={"Idempotency-Key": str(payload["id"])},
        )
        response.raise_for_status()

    # arq's defaults otherwise (max_jobs 10, poll_delay 0.5 s, results kept 1 h): the simplest setup.
    worker = Worker(
        functions=[func(deliver, name="deliver")],
        redis_settings=_redis_settings(redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
    )
    await worker.async_run()


def _serve(app: Starlette, port: int) -> None:
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=5,
        server_header=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    parser.add_argument("kind", choices=["web-a", "web-b", "worker-c", "instant"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", default="")
    parser.add_argument("--redis", default="")
    parser.add_argument("--upstream", default="")
    args = parser.parse_args()
    if args.kind == "web-a":
        _serve(app_a(args.secret), args.port)
    elif args.kind == "web-b":
        _serve(app_b(args.secret, args.redis), args.port)
    elif args.kind == "instant":
        _serve(app_instant(), args.port)
    else:
        import uvloop

        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            uvloop.run(run_worker_c(args.redis, args.upstream))


if __name__ == "__main__":
    main()
