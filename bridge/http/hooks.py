"""`/hooks/{name}`: receive a webhook, verify it, store it durably, answer.

    read body (size + time limits) → content type → verify (raw bytes) → parse → event id
    → Accepter.accept (dedupe + store + enqueue, one durable write) → 202 accepted | 200 duplicate

Mapping runs in the worker, so nothing here can lose a lead to a mapping bug. Errors are raised
as InboundError and rendered by `bridge.http.responses`; each outcome is counted, and refusals
are logged with ids only.

POSTs take a fast path (`post_hook`, called by `bridge.app.BridgeApp` before Starlette's
middleware and router: they cost about a fifth of the route's CPU); other methods (provider
handshakes, 405) go through the Starlette route `receive_hook`, which hands a POST to the same
`_post`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from bridge.errors import InboundError, MethodNotAllowed, UnknownMapping
from bridge.http.body import body_received, read_body
from bridge.http.responses import JSONResponse, error_response
from bridge.providers.base import InboundRequest, Provider, ProviderResponse
from bridge.queue.ingest import Incoming

if TYPE_CHECKING:
    from bridge.runtime import Runtime

log = logging.getLogger("bridge.http")

JSON_HEADERS = (b"content-type", b"application/json")


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


def _inbound(scope: Scope, headers: dict[str, str], body: bytes, provider: Provider[Any]) -> InboundRequest:
    return InboundRequest(
        method=scope["method"],
        url=str(URL(scope=scope)) if provider.uses_url else "",
        path=scope["path"],
        query=_Query(scope.get("query_string", b"")),
        headers=headers,
        body=body,
    )


def _headers(scope: Scope) -> dict[str, str]:
    # ASGI servers give header names in lower case; with repeats, the last one wins
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _provider_response(reply: ProviderResponse) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type)


@dataclass(frozen=True, slots=True)
class _Accepted:
    """The usual answer (202 accepted / 200 duplicate, JSON), sent without building a Response."""

    status: int
    body: bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = (b"content-length", str(len(self.body)).encode())
        await send({"type": "http.response.start", "status": self.status, "headers": [JSON_HEADERS, length]})
        await send({"type": "http.response.body", "body": self.body})


async def post_hook(runtime: Runtime, name: str, scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI fast path for `POST /hooks/{name}`."""
    try:
        answer = await _post(runtime, name, scope, receive)
    except Exception:
        # Labelled as refusals are: `name` comes from the URL, a label only when a mapping has it.
        label = name if runtime.mappings.get(name) is not None else "_unknown"
        runtime.metrics.count_webhook(label, "error")
        log.exception("unexpected error while receiving a webhook", extra={"mapping": label})
        answer = JSONResponse({"status": "error", "error": "internal error"}, status_code=500)
    await answer(scope, receive, send)


async def receive_hook(request: Request) -> Response:
    """The Starlette route: handshakes and 405s (and POSTs, when not on the fast path)."""
    runtime: Runtime = request.app.state.runtime
    name = request.path_params["name"]
    if request.method == "POST":
        answer = await _post(runtime, name, request.scope, request.receive)
        if isinstance(answer, _Accepted):
            return Response(answer.body, status_code=answer.status, media_type="application/json")
        return answer
    mapping = runtime.mappings.get(name)
    label = name if mapping is not None else "_unknown"
    try:
        if mapping is None:
            raise UnknownMapping()
        reply = mapping.provider.handshake(
            _inbound(request.scope, _headers(request.scope), b"", mapping.provider)
        )
        if reply is None:
            raise MethodNotAllowed()
        return _provider_response(reply)
    except InboundError as exc:
        return _refused(runtime, label, exc)


async def _post(runtime: Runtime, name: str, scope: Scope, receive: Receive) -> Response | _Accepted:
    started = time.perf_counter()
    mapping = runtime.mappings.get(name)
    try:
        if mapping is None:
            raise UnknownMapping()
        provider = mapping.provider
        headers = _headers(scope)
        settings = runtime.settings
        timeout_s = None if body_received(scope) else settings.read_timeout_s
        body = await read_body(receive, headers.get("content-length"), settings.max_body_bytes, timeout_s)
        inbound = _inbound(scope, headers, body, provider)
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
                headers={h: headers[h] for h in provider.kept_headers if h in headers},
            )
        )
    except InboundError as exc:
        return _refused(runtime, name if mapping is not None else "_unknown", exc)
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
    return _Accepted(status, orjson.dumps({"status": outcome, "delivery_id": accepted.delivery_id}))


def _refused(runtime: Runtime, label: str, exc: InboundError) -> Response:
    runtime.metrics.count_webhook(label, exc.outcome)
    if exc.status == 401:
        runtime.metrics.signature_failures.labels(mapping=label).inc()
    log.info(
        "webhook refused",
        extra={"mapping": label, "status": exc.status, "outcome": exc.outcome, "reason": _internal(exc)},
    )
    return error_response(exc)


def _internal(exc: InboundError) -> str:
    return str(getattr(exc, "internal_reason", exc.reason))
