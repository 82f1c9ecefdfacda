"""Bearer-protected JSON admin routes: the dead-letter queue and delivery state.

Without BRIDGE_ADMIN_TOKEN every admin route answers 404 (as if it did not exist); with it, a
missing or wrong token is a 401. The token is compared in constant time. A queue that cannot be
reached, or that takes no write (a replica after a failover, maxmemory), is a 503 with
Retry-After (`bridge.http.responses.queue_error_handler`), as for a webhook. Records are opened
with the process's keyring (encryption at rest), so a dead letter's failed command is shown; the
raw payload never is. A listing shows the oldest
`deliveries.LISTED` dead letters; its `total` counts them all.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from bridge.errors import Unauthorized, UnknownMapping
from bridge.http.responses import JSONResponse
from bridge.queue import deliveries

if TYPE_CHECKING:
    from bridge.runtime import Runtime


class NotFound(UnknownMapping):
    reason = "not found"


def _authorized(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    token = runtime.settings.admin_token
    if token is None or not token.get_secret_value():
        raise NotFound()
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value()
    # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("admin token")
    return runtime


async def list_dlq(request: Request) -> Response:
    runtime = _authorized(request)
    ids = await deliveries.dlq_ids(runtime.redis, limit=deliveries.LISTED)
    items = []
    for delivery_id in ids:
        record = await deliveries.load(runtime.redis, delivery_id, keyring=runtime.keyring)
        if record is not None:
            items.append(record.model_dump(mode="json", exclude={"history"}))
    total = await deliveries.dlq_size(runtime.redis)
    return JSONResponse({"count": len(items), "total": max(total, len(items)), "items": items})


async def _dead_record(request: Request) -> tuple[Runtime, deliveries.DeliveryRecord]:
    runtime = _authorized(request)
    delivery_id = request.path_params["id"]
    record = await deliveries.load(runtime.redis, delivery_id, keyring=runtime.keyring)
    if record is None or not await deliveries.in_dlq(runtime.redis, delivery_id):
        raise NotFound()
    return runtime, record


async def show_dlq(request: Request) -> Response:
    _, record = await _dead_record(request)
    return JSONResponse(record.model_dump(mode="json"))


async def replay_dlq(request: Request) -> Response:
    runtime, record = await _dead_record(request)
    outcome = await deliveries.enqueue_again(runtime.redis, record.id, runtime.settings.retention_s)
    if outcome == deliveries.REPLAYING:
        # A run of an earlier replay is under way: a replay now could not be kept if it dies.
        return JSONResponse({"status": "error", "error": "being replayed"}, status_code=409)
    if outcome != deliveries.QUEUED:
        raise NotFound()  # delivered (or purged) by the time we got here
    return JSONResponse({"status": "queued", "delivery_id": record.id}, status_code=202)


async def delete_dlq(request: Request) -> Response:
    runtime, record = await _dead_record(request)
    outcome = await deliveries.purge(runtime.redis, record.id)
    if outcome == deliveries.REPLAYING:
        return JSONResponse({"status": "error", "error": "being replayed"}, status_code=409)
    if outcome != deliveries.PURGED:
        raise NotFound()
    return JSONResponse({"status": "purged", "delivery_id": record.id})


async def show_delivery(request: Request) -> Response:
    runtime = _authorized(request)
    record = await deliveries.load(runtime.redis, request.path_params["id"], keyring=runtime.keyring)
    if record is None:
        raise NotFound()
    return JSONResponse(record.model_dump(mode="json"))
