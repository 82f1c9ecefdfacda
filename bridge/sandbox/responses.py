"""JSON answers of the sandbox, and `SandboxError`: the one exception its handlers raise to refuse.

Every refusal is `{"error": "<message>"}` with the status of the error; messages name fields and
ids, never lead values or keys. The app turns a raised SandboxError into its response in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

JSON_MEDIA_TYPE = "application/json"


class SandboxError(Exception):
    """A request the sandbox refuses, as the upstream would: status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON_MEDIA_TYPE, headers=headers)


def raw_json_response(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type=JSON_MEDIA_TYPE, headers=headers)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


async def sandbox_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SandboxError)
    return error_response(exc.status, exc.message, exc.headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method), as JSON like every other refusal."""
    status = int(getattr(exc, "status_code", 500))
    detail = str(getattr(exc, "detail", "error"))
    headers: Mapping[str, str] | None = getattr(exc, "headers", None)
    return error_response(status, detail.lower(), headers)
