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
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from bridge.errors import InboundError, MethodNotAllowed, UnknownMapping
from bridge.http.body import read_body
from bridge.http.responses import JSONResponse, error_response
from bridge.providers.base import InboundRequest, Provider, ProviderResponse
from bridge.queue.ingest import Incoming

if TYPE_CHECKING:
    from bridge.runtime import Runtime

log = logging.getLogger("bridge.http")


class _Query(Mapping[str, str]):
    """The query string's parameters (last one wins), parsed only if a provider asks."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._parsed: dict[str, str] | None = None

    def _params(self) -> dict[str, str]:
        if self._parsed is None:
            self._parsed = dict(parse_qsl(self._raw.decode("latin-1"), keep_blank_values=True))
        return self._parsed

    def __getitem__(self, key: str) -> str:
        return self._params()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params())

    def __len__(self) -> int:
        return len(self._params())


def _inbound(request: Request, body: bytes, provider: Provider[Any]) -> InboundRequest:
    scope = request.scope
    return InboundRequest(
        method=request.method,
        url=str(request.url) if provider.uses_url else "",
        path=scope["path"],
        query=_Query(scope.get("query_string", b"")),
        # ASGI servers give header names in lower case
        headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
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
            reply = provider.handshake(_inbound(request, b"", provider))
            if reply is None:
                raise MethodNotAllowed()
            return _provider_response(reply)
        body = await read_body(request, runtime.settings.max_body_bytes, runtime.settings.read_timeout_s)
        inbound = _inbound(request, body, provider)
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
        runtime.metrics.count_webhook(label, exc.outcome)
        if exc.status == 401:
            runtime.metrics.signature_failures.labels(mapping=label).inc()
        log.info(
            "webhook refused",
            extra={"mapping": label, "status": exc.status, "outcome": exc.outcome, "reason": _internal(exc)},
        )
        return error_response(exc)
    outcome = "duplicate" if accepted.duplicate else "accepted"
    runtime.metrics.count_webhook(name, outcome)
    elapsed = time.perf_counter() - started
    runtime.metrics.observe_ingest(name, elapsed)
    # At debug: one line per accepted webhook costs about a fifth of the route's CPU. Refusals
    # are logged at info; the worker logs each delivery's outcome.
    log.debug(
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
