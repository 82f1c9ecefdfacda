"""The one place errors become HTTP responses. Routes raise; they never build error bodies."""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from bridge.errors import InboundError, QueueUnavailable, RateLimited


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: InboundError) -> Response:
    headers: dict[str, str] = {}
    if isinstance(exc, QueueUnavailable | RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    if exc.status == 408:
        headers["Connection"] = "close"
    return JSONResponse({"status": "error", "error": exc.reason}, status_code=exc.status, headers=headers)


async def inbound_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InboundError)
    return error_response(exc)


async def queue_error_handler(request: Request, exc: Exception) -> Response:
    """Redis unreachable or too slow under a route (the admin routes), or taking no write (a
    replica after a failover, a server at its maxmemory): the queue is unavailable, not a server
    error. (Another Redis error, a refused command, is a bug: a 500 still.)"""
    return error_response(QueueUnavailable())


# Error replies of a server that is there but cannot serve now, which redis-py raises as a bare
# ResponseError: a script running past busy-reply-threshold (BUSY), a replica cut off from its
# primary with replica-serve-stale-data off (MASTERDOWN), a primary short of the replicas
# min-replicas-to-write asks for (NOREPLICAS), a cluster mid-failover.
# The reply as it is, or as redis-py words one of a pipeline's commands:
# `Command # 1 (EXISTS ...) of pipeline caused error: ('BUSY ...',)`.
_UNAVAILABLE_REPLY = re.compile(
    r"(?:^|^Command # \d+ \(.*\) of pipeline caused error: \(['\"])"
    r"(?:BUSY|MASTERDOWN|NOREPLICAS|TRYAGAIN|CLUSTERDOWN) ",
    re.DOTALL,
)


async def queue_reply_handler(request: Request, exc: Exception) -> Response:
    """A command the queue refused: unavailable for now (`_UNAVAILABLE_REPLY`, a 503 as in
    `queue_error_handler`), or a bug (raised on: a 500, logged with its stack)."""
    if _UNAVAILABLE_REPLY.match(str(exc)):
        return error_response(QueueUnavailable())
    raise exc


async def not_found_handler(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    reason = {404: "not found", 405: "method not allowed"}.get(status, "error")
    return JSONResponse({"status": "error", "error": reason}, status_code=status)
