"""`/hooks/{name}`: receive a webhook, verify it, store it durably, answer.

    read body (size + time limits) → content type → verify (raw bytes) → parse → event id
    → Accepter.accept (dedupe + store + enqueue, one durable write) → 202 accepted | 200 duplicate

Mapping runs in the worker, so nothing here can lose a lead to a mapping bug. Errors are raised
as InboundError and rendered by `bridge.http.responses`; each outcome is counted and logged with
ids only.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from bridge.errors import InboundError, MethodNotAllowed, UnknownMapping
from bridge.http.body import read_body
from bridge.http.responses import JSONResponse, error_response
from bridge.providers.base import InboundRequest, ProviderResponse
from bridge.queue.ingest import Incoming

if TYPE_CHECKING:
    from bridge.runtime import Runtime

log = logging.getLogger("bridge.http")


def _inbound(request: Request, body: bytes) -> InboundRequest:
    return InboundRequest(
        method=request.method,
        url=str(request.url),
        path=request.url.path,
        query=dict(request.query_params),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
    )


def _provider_response(reply: ProviderResponse) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type)


async def receive_hook(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    name = request.path_params["name"]
    started = time.perf_counter()
    mapping = runtime.mappings.get(name)
    label = name if mapping is not None else "_unknown"
    try:
        if mapping is None:
            raise UnknownMapping()
        provider = mapping.provider
        if request.method != "POST":
            reply = provider.handshake(_inbound(request, b""))
            if reply is None:
                raise MethodNotAllowed()
            return _provider_response(reply)
        body = await read_body(request, runtime.settings.max_body_bytes, runtime.settings.read_timeout_s)
        inbound = _inbound(request, body)
        provider.check_content_type(inbound)
        verified = provider.verify(inbound, runtime.clock())
        payload = provider.parse(verified)
        event_id = provider.event_id(verified, payload)
        await runtime.limiter.check(name, mapping)
        accepted = await runtime.accepter.accept(
            Incoming(
                mapping=name,
                provider=provider.name,
                event_id=event_id,
                body=body,
                headers={h: inbound.headers[h] for h in provider.kept_headers if h in inbound.headers},
            )
        )
    except InboundError as exc:
        runtime.metrics.webhooks.labels(mapping=label, outcome=exc.outcome).inc()
        if exc.status == 401:
            runtime.metrics.signature_failures.labels(mapping=label).inc()
        log.info(
            "webhook refused",
            extra={"mapping": label, "status": exc.status, "outcome": exc.outcome, "reason": _internal(exc)},
        )
        return error_response(exc)
    outcome = "duplicate" if accepted.duplicate else "accepted"
    runtime.metrics.webhooks.labels(mapping=name, outcome=outcome).inc()
    elapsed = time.perf_counter() - started
    runtime.metrics.ingest_seconds.labels(mapping=name).observe(elapsed)
    log.info(
        "webhook %s",
        outcome,
        extra={
            "mapping": name,
            "provider": provider.name,
            "delivery_id": accepted.delivery_id,
            "duration_ms": round(elapsed * 1000, 3),
        },
    )
    reply = provider.accepted_response(accepted.delivery_id, accepted.duplicate)
    if reply is not None:
        return _provider_response(reply)
    status = 200 if accepted.duplicate else provider.accepted_status
    return JSONResponse({"status": outcome, "delivery_id": accepted.delivery_id}, status_code=status)


def _internal(exc: InboundError) -> str:
    return str(getattr(exc, "internal_reason", exc.reason))
