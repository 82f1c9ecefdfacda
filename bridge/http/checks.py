"""What `/healthz`, `/readyz` and `/metrics` say, whichever server answers them: the web app's
Starlette routes (bridge/http/health.py) and the worker's probe server (bridge/http/probe.py).
No web framework here, so that the worker can use it without loading one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from bridge.runtime import Runtime

ALIVE: dict[str, object] = {"status": "ok"}
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


async def readiness(runtime: Runtime) -> tuple[int, dict[str, object]]:
    """(200 or 503, the JSON body): ready when the queue answers and mappings are loaded."""
    checks: dict[str, object] = {"mappings": len(runtime.mappings.current.names)}
    try:
        await runtime.redis.ping()
        checks["queue"] = "ok"
    except (RedisError, OSError):
        checks["queue"] = "unreachable"
    checks["workers"] = await runtime.worker_heartbeats()
    ready = checks["queue"] == "ok" and len(runtime.mappings.current.names) > 0
    return (200 if ready else 503), {"status": "ready" if ready else "not ready", **checks}


async def metrics_page(runtime: Runtime) -> bytes:
    """The Prometheus text page, with the queue gauges read fresh from Redis."""
    await runtime.refresh_gauges()
    return runtime.metrics.render()
