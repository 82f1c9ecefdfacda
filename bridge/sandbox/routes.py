"""The Connect API routes of the sandbox (CONTRACT §2), with bearer auth, faults and idempotency.

    GET   /connect/tables                 the Lead Pools (a JSON list)
    GET   /connect/tables/{id}            one Lead Pool, 404 when unknown
    POST  /connect/table_entries          create a lead: 201 and the entry
    PATCH /connect/table_entries/{id}     RFC 7396 merge patch (application/merge-patch+json): 200
    GET   /connect/table_entries/{id}     one entry

Every request passes, in order: the configured latency, bearer auth (401), the fault draw, then
the handler. Writes read their JSON body once, then go through the Idempotency-Key records.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.sandbox.faults import Fault
from bridge.sandbox.idempotency import REPLAYED_HEADER, fingerprint
from bridge.sandbox.responses import SandboxError, error_response, json_response, raw_json_response
from bridge.sandbox.store import SandboxState

MERGE_PATCH_MEDIA_TYPE = "application/merge-patch+json"

Endpoint = Callable[[Request], Awaitable[Response]]
Execute = Callable[[Any], Any]


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SandboxError(400, "the request body is not valid JSON") from None


async def _idempotent_write(request: Request, state: SandboxState, status: int, execute: Execute) -> Response:
    """Run `execute(body)` once per Idempotency-Key; replay its stored answer to later retries."""
    document = await _read_json(request)
    key = request.headers.get("idempotency-key")
    if not key:
        return json_response(execute(document), status)
    digest = fingerprint(request.method, request.scope["path"], document)
    async with state.idempotency.locked(key):
        stored = state.idempotency.get(key)
        if stored is not None:
            if stored.fingerprint != digest:
                raise SandboxError(422, "Idempotency-Key was already used for a different request")
            return raw_json_response(stored.body, stored.status, {REPLAYED_HEADER: "true"})
        body = orjson.dumps(execute(document))
        state.idempotency.store(key, digest, status, body)
    return raw_json_response(body, status)


async def _with_fault(fault: Fault, state: SandboxState, handler: Endpoint, request: Request) -> Response:
    config = state.faults
    if fault is Fault.ERROR:
        return error_response(500, "injected fault: internal error")
    if fault is Fault.RATE_LIMIT:
        return error_response(429, "injected fault: rate limited", {"Retry-After": str(config.retry_after_s)})
    if fault is Fault.TIMEOUT:
        await asyncio.sleep(config.timeout_s)
        return error_response(504, "injected fault: gateway timeout")
    # Fault.LOST_RESPONSE: the write happens, its answer never arrives.
    with contextlib.suppress(SandboxError):
        await handler(request)
    await asyncio.sleep(config.timeout_s)
    return error_response(502, "injected fault: response lost")


def _connect(state: SandboxState, handler: Endpoint, *, write: bool) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        injector = state.injector
        if injector.latency_s:
            await asyncio.sleep(injector.latency_s)
        state.authorize(request.headers.get("authorization"))
        fault = injector.draw(write=write) if injector.active else None
        if fault is None:
            return await handler(request)
        return await _with_fault(fault, state, handler, request)

    return endpoint


def connect_routes(state: SandboxState) -> list[Route]:
    async def list_tables(request: Request) -> Response:
        return raw_json_response(state.tables_json())

    async def get_table(request: Request) -> Response:
        return raw_json_response(state.table(request.path_params["table_id"]).json)

    async def get_entry(request: Request) -> Response:
        return json_response(state.entry(request.path_params["entry_id"]))

    async def create_entry(request: Request) -> Response:
        return await _idempotent_write(request, state, 201, state.create_entry)

    async def patch_entry(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != MERGE_PATCH_MEDIA_TYPE:
            raise SandboxError(415, f"a PATCH needs Content-Type: {MERGE_PATCH_MEDIA_TYPE}")
        entry_id: str = request.path_params["entry_id"]
        return await _idempotent_write(request, state, 200, lambda patch: state.patch_entry(entry_id, patch))

    return [
        Route("/connect/tables", _connect(state, list_tables, write=False), methods=["GET"]),
        Route("/connect/tables/{table_id}", _connect(state, get_table, write=False), methods=["GET"]),
        Route("/connect/table_entries", _connect(state, create_entry, write=True), methods=["POST"]),
        Route(
            "/connect/table_entries/{entry_id}",
            _connect(state, patch_entry, write=True),
            methods=["PATCH"],
            name="patch_entry",
        ),
        Route(
            "/connect/table_entries/{entry_id}",
            _connect(state, get_entry, write=False),
            methods=["GET"],
            name="get_entry",
        ),
    ]
