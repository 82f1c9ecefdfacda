"""`/healthz` (the process is alive), `/readyz` (queue reachable, mappings loaded), `/metrics`:
the web app's routes over bridge/http/checks.py (the worker answers them in bridge/http/probe.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from bridge.http import checks
from bridge.http.responses import JSONResponse

if TYPE_CHECKING:
    from bridge.runtime import Runtime


async def healthz(request: Request) -> Response:
    return JSONResponse(checks.ALIVE)


async def readyz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    status, body = await checks.readiness(runtime)
    return JSONResponse(body, status_code=status)


async def metrics(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return Response(await checks.metrics_page(runtime), media_type=checks.METRICS_CONTENT_TYPE)
