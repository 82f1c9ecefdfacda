"""The OpenAPI 3.1 document of the bridge's own routes, served at `GET /openapi.json`.

It describes what `bridge.app.routes()` serves, every answer of CONTRACT §5 included, with
JSON bodies from pydantic models (the delivery record is `bridge.queue.deliveries.DeliveryRecord`
itself; the small answer bodies are modelled here). A test keeps it true: each (path, method)
of `routes()` is documented and nothing else is, and schemathesis checks the running app's
answers against it. Starlette answers HEAD on every GET route, so each GET has a HEAD twin.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from bridge.queue.deliveries import DeliveryRecord

REF = "#/components/schemas/{model}"
JSON = "application/json"


class Accepted(BaseModel):
    """The answer to a stored (202) or already stored (200) webhook."""

    status: Literal["accepted", "duplicate"]
    delivery_id: str


class Error(BaseModel):
    """Every refusal: a fixed, short reason; nothing about the request is echoed."""

    status: Literal["error"]
    error: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    mappings: int = Field(description="number of mappings loaded")
    queue: Literal["ok", "unreachable"]
    workers: int = Field(description="worker processes with a live heartbeat")


class DeadLetters(BaseModel):
    count: int = Field(description="deliveries listed here: the oldest, at most 1,000")
    total: int = Field(description="deliveries in the dead-letter queue")
    items: list[DeliveryRecord] = Field(description="dead-lettered deliveries, oldest first, without history")


class Queued(BaseModel):
    status: Literal["queued"]
    delivery_id: str


class Purged(BaseModel):
    status: Literal["purged"]
    delivery_id: str


MODELS: tuple[type[BaseModel], ...] = (
    Accepted,
    Error,
    Health,
    Readiness,
    DeadLetters,
    Queued,
    Purged,
    DeliveryRecord,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(description: str, model: type[BaseModel], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref(model)}}}
    if headers:
        answer["headers"] = headers
    return answer


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json(description, Error, headers)


RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}
# Answers of the HTTP server itself (uvicorn), before the app sees the request; any operation.
SERVER_ANSWERS = {
    "400": "the request is not valid HTTP (malformed request line, header or framing)",
    "503": "the server is at BRIDGE_MAX_CONCURRENT_REQUESTS (no Retry-After)",
}
TEXT = {"text/plain": {"schema": {"type": "string"}}}
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "the mapping's name (its file's `name:`); an unknown name is a 404",
    "schema": {"type": "string"},
}
DELIVERY_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "a delivery id, as answered by POST /hooks/{name}",
    "schema": {"type": "string"},
}
TOKEN_QUERY = {
    "name": "token",
    "in": "query",
    "required": False,
    "description": "the shared token of `token`, `jotform` and `salesforce` mappings (when not in a header)",
    "schema": {"type": "string"},
}
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
ADMIN_ERRORS = {
    "401": _error("the bearer token is missing or wrong"),
    "404": _error("no BRIDGE_ADMIN_TOKEN is set (admin routes are off), or no such delivery"),
    "503": _error(
        "the queue is unreachable, or takes no write (a failover, its maxmemory); retry later", RETRY_AFTER
    ),
}
NO_MAPPING = _error("no mapping of that name")
NOT_ALLOWED = _error("the mapping's provider takes no request with this method")

WEBHOOK_BODY = {
    "required": True,
    "description": (
        "The provider's raw body, verified byte for byte. Which media types a mapping takes depends "
        "on its provider; any other is a 415. JSON nested deeper than 64 levels is a 400."
    ),
    "content": {
        JSON: {"schema": {}},
        "application/x-www-form-urlencoded": {
            "schema": {"type": "object", "additionalProperties": {"type": "string"}}
        },
        "multipart/form-data": {"schema": {"type": "object", "additionalProperties": {"type": "string"}}},
        "text/xml": {"schema": {"type": "string"}},
    },
}


def _hook_post() -> dict[str, Any]:
    return {
        "operationId": "receiveWebhook",
        "summary": "Receive a webhook for a mapping",
        "description": (
            "Verifies the request with the mapping's provider, parses just enough to find the event "
            "id, stores it durably in the queue, then answers. Mapping runs later, in the worker."
        ),
        "tags": ["webhooks"],
        "parameters": [NAME, TOKEN_QUERY],
        "requestBody": WEBHOOK_BODY,
        "responses": {
            "200": {
                "description": (
                    "this event id was already accepted for this mapping (a provider retry); also the "
                    "success answer of providers that count only an exact 200 (Webflow: same JSON "
                    "body) or need their own (Salesforce: the SOAP Ack)"
                ),
                "content": {JSON: {"schema": _ref(Accepted)}, "text/xml": {"schema": {"type": "string"}}},
            },
            "202": _json("stored in the queue (never before)", Accepted),
            "400": _error("the body does not parse for this provider (bad JSON, form, XML, too deep)"),
            "401": _error("signature, token or credentials wrong or missing, or timestamp out of tolerance"),
            "404": NO_MAPPING,
            "408": _error(
                "the body did not arrive within BRIDGE_READ_TIMEOUT_S (or the connection is closed)",
                {"Connection": {"description": "close", "schema": {"type": "string"}}},
            ),
            "413": _error("the body is larger than BRIDGE_MAX_BODY_BYTES (refused before it is read whole)"),
            "415": _error("a content type this mapping's provider never sends"),
            "429": _error("the mapping's accept rate limit is reached", RETRY_AFTER),
            "503": _error(
                "the queue is unreachable: not stored (or, if the store answered too late, stored: "
                "the retry is then answered 200 duplicate); retry later",
                RETRY_AFTER,
            ),
        },
    }


def _hook_get() -> dict[str, Any]:
    return {
        "operationId": "webhookHandshake",
        "summary": "A provider's subscription handshake (Meta's hub.challenge)",
        "tags": ["webhooks"],
        "parameters": [
            NAME,
            {"name": "hub.mode", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "hub.verify_token", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "hub.challenge", "in": "query", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": "the challenge, echoed (mode and verify token matched)",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "403": {
                "description": "the handshake's mode or verify token is wrong",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "404": NO_MAPPING,
            "405": NOT_ALLOWED,
        },
    }


def _hook_other(method: str) -> dict[str, Any]:
    return {
        "operationId": f"webhook{method.title()}",
        "summary": f"{method} is not a webhook method",
        "tags": ["webhooks"],
        "parameters": [NAME],
        "responses": {"404": NO_MAPPING, "405": NOT_ALLOWED},
    }


def _admin(operation_id: str, summary: str, answers: dict[str, Any], by_id: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["admin"],
        "security": ADMIN_SECURITY,
        "responses": {**answers, **copy.deepcopy(ADMIN_ERRORS)},  # `_server_answers` extends them
    }
    if by_id:
        operation["parameters"] = [DELIVERY_ID]
    return operation


def _head(get: dict[str, Any]) -> dict[str, Any]:
    """The HEAD twin of a GET operation: the same statuses and headers, no body."""
    head = copy.deepcopy(get)
    head["operationId"] = get["operationId"] + "Head"
    head["summary"] = "Same as GET, without the body"
    for answer in head["responses"].values():
        answer.pop("content", None)
    return head


def _paths() -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {
        "/hooks/{name}": {
            "post": _hook_post(),
            "get": _hook_get(),
            **{m.lower(): _hook_other(m) for m in ("PUT", "PATCH", "DELETE", "OPTIONS")},
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is alive",
                "tags": ["operations"],
                "responses": {"200": _json("alive", Health)},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "The queue is reachable and mappings are loaded",
                "tags": ["operations"],
                "responses": {"200": _json("ready", Readiness), "503": _json("not ready", Readiness)},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "the Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "tags": ["operations"],
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}
                },
            }
        },
        "/admin/dlq": {
            "get": _admin(
                "listDeadLetters",
                "The dead-letter queue",
                {"200": _json("dead-lettered deliveries", DeadLetters)},
                by_id=False,
            )
        },
        "/admin/dlq/{id}": {
            "get": _admin(
                "showDeadLetter",
                "One dead-lettered delivery",
                {"200": _json("the delivery, its reason and failed command", DeliveryRecord)},
                by_id=True,
            ),
            "delete": _admin(
                "purgeDeadLetter",
                "Drop a dead-lettered delivery",
                {"200": _json("purged", Purged), "409": _error("a replay of it is queued or running")},
                by_id=True,
            ),
        },
        "/admin/dlq/{id}/replay": {
            "post": _admin(
                "replayDeadLetter",
                "Map a dead-lettered delivery again with the current mappings (same idempotency keys)",
                {
                    "202": _json("queued again; it leaves the DLQ once delivered", Queued),
                    "409": _error("a run of an earlier replay is under way; replay again if it dies"),
                },
                by_id=True,
            )
        },
        "/admin/deliveries/{id}": {
            "get": _admin(
                "showDelivery",
                "A delivery's state and attempts",
                {"200": _json("the delivery", DeliveryRecord)},
                by_id=True,
            )
        },
    }
    paths["/hooks/{name}"]["head"] = _hook_other("HEAD")
    for path, operations in paths.items():
        if "get" in operations and path != "/hooks/{name}":
            operations["head"] = _head(operations["get"])
        for method, operation in operations.items():
            _server_answers(operation["responses"], with_body=method != "head")
    return paths


def _server_answers(responses: dict[str, Any], with_body: bool) -> None:
    """Add the server's own 400/503 (text/plain) beside the app's answers of an operation."""
    for status, description in SERVER_ANSWERS.items():
        answer = responses.setdefault(status, {"description": description})
        if answer["description"] != description:
            answer["description"] += f"; or, from the server: {description}"
        if with_body:
            answer.setdefault("content", {}).update(copy.deepcopy(TEXT))
        if "Retry-After" in answer.get("headers", {}):
            answer["headers"] = copy.deepcopy(answer["headers"])
            answer["headers"]["Retry-After"]["required"] = False


def _version() -> str:
    try:
        return importlib.metadata.version("leadbridge")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call)."""
    _, schemas = models_json_schema([(m, "serialization") for m in MODELS], ref_template=REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "leadbridge",
            "version": _version(),
            "description": (
                "Webhooks in, Connect API leads out. The bridge's own refusals are JSON "
                '`{"status": "error", "error": …}`; the HTTP server itself may answer any request '
                "with a text/plain 400 (not valid HTTP) or 503 (BRIDGE_MAX_CONCURRENT_REQUESTS "
                "reached, without Retry-After)."
            ),
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "BRIDGE_ADMIN_TOKEN; without it, admin routes answer 404",
                }
            },
        },
    }


@functools.cache
def _rendered() -> bytes:
    return orjson.dumps(document())


async def openapi_json(request: Request) -> Response:
    return Response(_rendered(), media_type=JSON)
