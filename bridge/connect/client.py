"""The Connect API client: the only module that talks HTTP to the upstream (and to enrich sources).

One pooled `httpx.AsyncClient` per process, owned by whoever starts the worker, with explicit
limits and timeouts. Its transport is aiohttp's connection pool (through `httpx-aiohttp`) by
default: with many requests in flight, httpcore's pool spends more CPU per request than the
request itself (docs/performance.md has the numbers); BRIDGE_UPSTREAM_HTTP=httpx selects
httpx's own. Every write carries an `Idempotency-Key`; every failure becomes an
`UpstreamError` classified by `classify()`. Error messages keep the upstream's own message
(for the dead-letter queue) but never the request body.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson

from bridge.connect.classify import classify
from bridge.errors import UpstreamError

MERGE_PATCH = "application/merge-patch+json"
MAX_ERROR_TEXT = 300
# An enrich record is one lead's data (a Graph API lead is ~1 KB). The answer is read no further
# than this, counted after decompression: a source answering endlessly, or a small gzip body
# that inflates to gigabytes, would otherwise fill the worker's memory (docs/mappings.md, enrich).
MAX_ENRICH_BYTES = 4 * 1024 * 1024


def build_http_client(
    *,
    timeout_s: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
    pool: str = "aiohttp",
) -> httpx.AsyncClient:
    """The process's upstream client; `pool` is "aiohttp" or "httpx" (ignored with `transport`)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    if transport is None and pool == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        from bridge.connect.tls import client_context

        transport = AiohttpTransport(verify=client_context(), limits=limits, trust_env=False)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        limits=limits,
        transport=transport,
        follow_redirects=False,
    )


def _transport_error(exc: Exception) -> bool:
    """Whether a request failed without a usable answer: httpx's own errors, and aiohttp's that
    httpx-aiohttp passes through unmapped (a malformed status line or header, from the server or
    a proxy before it, is `aiohttp.ClientResponseError`). A failure to retry, not an internal
    error. aiohttp is looked at only where it is loaded (the httpx pool does not import it)."""
    aiohttp = sys.modules.get("aiohttp")
    return isinstance(exc, httpx.HTTPError) or (aiohttp is not None and isinstance(exc, aiohttp.ClientError))


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:MAX_ERROR_TEXT]
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])[:MAX_ERROR_TEXT]
    return response.text[:MAX_ERROR_TEXT]


class ConnectClient:
    """Create, merge-patch and read tables on the Connect API."""

    def __init__(
        self, http: httpx.AsyncClient, base_url: str, api_key: str, *, observe: Any | None = None
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        # observe(method, status_label, seconds): a metrics hook (leadbridge_upstream_request_seconds)
        self._observe = observe

    async def create_entry(self, body: Mapping[str, Any], idempotency_key: str) -> dict[str, Any]:
        return await self._send(
            "POST",
            "/connect/table_entries",
            body,
            {"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
        )

    async def patch_entry(
        self, entry_id: str, patch: Mapping[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        return await self._send(
            "PATCH",
            f"/connect/table_entries/{entry_id}",
            patch,
            {"Content-Type": MERGE_PATCH, "Idempotency-Key": idempotency_key},
        )

    async def get_table(self, table_id: str) -> dict[str, Any]:
        return await self._send("GET", f"/connect/tables/{table_id}", None, {})

    async def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None, headers: dict[str, str]
    ) -> dict[str, Any]:
        content = orjson.dumps(body) if body is not None else None
        started = time.perf_counter()
        try:
            response = await self._http.request(
                method, self._base + path, content=content, headers={**self._auth, **headers}
            )
        except Exception as exc:
            if not _transport_error(exc):
                raise
            self._record(method, "error", started)
            raise UpstreamError(
                f"{method} {path.split('/')[2]}: {type(exc).__name__}", retryable=True
            ) from None
        self._record(method, str(response.status_code), started)
        outcome = classify(response.status_code, retry_after=response.headers.get("retry-after"))
        if outcome.ok:
            try:
                data = response.json() if response.content else {}
            except ValueError:
                data = {}
            return data if isinstance(data, dict) else {"value": data}
        status = response.status_code
        raise UpstreamError(
            f"{method} {path.split('/')[2]} answered {status}: {_error_text(response)}",
            retryable=outcome.retryable,
            retry_after_s=outcome.retry_after_s,
            status=status,
            # The mapping's table, not one lead: refused to our key (403), or not found (404 to
            # a create or a table read; a patch's 404 is its entry's). The delivery stops.
            whole=status == 403 or (status == 404 and method != "PATCH"),
        )

    def _record(self, method: str, status: str, started: float) -> None:
        if self._observe is not None:
            self._observe(method, status, time.perf_counter() - started)


class EnrichClient:
    """GETs the full record for thin webhooks (CONTRACT §6 `enrich`), classified like upstream calls.

    Enrich sources are third parties, so they get a connection pool of their own, made on the
    first fetch (`make_http`; most workers never fetch): a slow one must not hold the connections
    Connect calls wait for, where a timeout counts as the Connect API being down and opens its
    circuit breaker."""

    def __init__(self, make_http: Callable[[], httpx.AsyncClient]) -> None:
        self._make_http = make_http
        self._http: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def __call__(self, url: str, headers: Mapping[str, str], timeout_s: float | None = None) -> Any:
        if self._http is None:
            self._http = self._make_http()
        # httpx's timeout bounds each read, not the fetch: a source trickling its answer a byte
        # at a time would hold the job until BRIDGE_JOB_TIMEOUT_S. `timeout_s` is documented as
        # the limit of one fetch attempt, so the whole of it (connect, answer, body) is bounded.
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                status, retry_after, body = await self._fetch(self._http, url, headers, timeout_s)
        except TimeoutError:
            if not deadline.expired():
                raise  # the job's own time limit, around this one: the worker's to handle
            raise UpstreamError("enrich fetch failed: timed out", retryable=True) from None
        except Exception as exc:
            if not _transport_error(exc):
                raise
            raise UpstreamError(f"enrich fetch failed: {type(exc).__name__}", retryable=True) from None
        outcome = classify(status, retry_after=retry_after, third_party=True)
        if not outcome.ok:
            raise UpstreamError(
                f"enrich fetch answered {status}",
                retryable=outcome.retryable,
                retry_after_s=outcome.retry_after_s,
                status=status,
                # the source refuses the mapping's token, for every record alike: not one element's
                whole=status == 401,
            )
        if body is None:
            # The same record would be as large on every try: dead-lettered, replayable once the
            # source (or the mapping's URL, e.g. a `fields=` selection) is put right.
            raise UpstreamError(f"enrich fetch answered more than {MAX_ENRICH_BYTES} bytes", retryable=False)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
            raise UpstreamError("enrich fetch did not return JSON", retryable=False) from None

    @staticmethod
    async def _fetch(
        http: httpx.AsyncClient, url: str, headers: Mapping[str, str], timeout_s: float | None
    ) -> tuple[int, str | None, bytes | None]:
        """The status, Retry-After and (decoded) body of a GET; the body None past
        MAX_ENRICH_BYTES, and not read at all for a failure (never used, and as unbounded)."""
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        async with http.stream("GET", url, headers=dict(headers), timeout=timeout) as response:
            retry_after = response.headers.get("retry-after")
            if not 200 <= response.status_code < 300:
                return response.status_code, retry_after, b""
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_ENRICH_BYTES:
                    return response.status_code, retry_after, None
            return response.status_code, retry_after, bytes(body)
