"""`/healthz` (the process is alive), `/readyz` (queue reachable, mappings loaded), `/metrics`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from bridge.http.responses import JSONResponse

if TYPE_CHECKING:
    from bridge.runtime import Runtime


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    checks: dict[str, object] = {"mappings": len(runtime.mappings.current.names)}
    try:
        await runtime.redis.ping()
        checks["queue"] = "ok"
    except (RedisError, OSError):
        checks["queue"] = "unreachable"
    workers = await runtime.worker_heartbeats()
    checks["workers"] = workers
    ready = checks["queue"] == "ok" and len(runtime.mappings.current.names) > 0
    return JSONResponse(
        {"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503
    )


async def metrics(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    await runtime.refresh_gauges()
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
