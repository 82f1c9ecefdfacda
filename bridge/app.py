"""The web app factory: `create_app(settings)` for `serve`, or `create_app(settings, runtime=...)`
when the CLI shares one Runtime between the web app and the worker (`run`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bridge.errors import InboundError
from bridge.http import admin, health, hooks, openapi
from bridge.http.responses import (
    inbound_error_handler,
    not_found_handler,
    queue_error_handler,
    queue_reply_handler,
)
from bridge.runtime import Runtime
from bridge.settings import Settings

HOOK_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
HOOKS = "/hooks/"


class BridgeApp(Starlette):
    """Starlette, with `POST /hooks/{name}` (nearly every request) handed to the hook handler
    before the middleware stack and the router; every other request goes the usual way."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            name = path[len(HOOKS) :]
            if path.startswith(HOOKS) and name and "/" not in name:
                scope["app"] = self
                await hooks.post_hook(self.state.runtime, name, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def routes() -> list[Route]:
    return [
        Route("/hooks/{name}", hooks.receive_hook, methods=HOOK_METHODS),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/admin/dlq", admin.list_dlq, methods=["GET"]),
        Route("/admin/dlq/{id}", admin.show_dlq, methods=["GET"]),
        Route("/admin/dlq/{id}", admin.delete_dlq, methods=["DELETE"]),
        Route("/admin/dlq/{id}/replay", admin.replay_dlq, methods=["POST"]),
        Route("/admin/deliveries/{id}", admin.show_delivery, methods=["GET"]),
    ]


def create_app(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    redis_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> BridgeApp:
    """The webhook web app. Without a runtime, the lifespan builds (and closes) its own."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        url = redis_url or settings.redis_url
        if url is None:
            raise RuntimeError("create_app needs a redis_url when REDIS_URL is unset")
        own = Runtime(settings, redis_url=url, environ=environ if environ is not None else os.environ)
        own.load_mappings()
        own.start_background()
        app.state.runtime = own
        try:
            yield
        finally:
            await own.close()

    app = BridgeApp(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={
            InboundError: inbound_error_handler,
            HTTPException: not_found_handler,
            RedisConnectionError: queue_error_handler,  # and BusyLoadingError (a restart's load)
            RedisTimeoutError: queue_error_handler,
            # The queue answers but takes no write: a replica after a failover (READONLY), or at
            # its maxmemory (OOM). A webhook is a 503 then, and so is a replay.
            RedisReadOnlyError: queue_error_handler,
            RedisOutOfMemoryError: queue_error_handler,
            # BUSY, MASTERDOWN, ...: a 503 too; any other refusal is a bug, a 500.
            RedisResponseError: queue_reply_handler,
        },
    )
    if runtime is not None:
        app.state.runtime = runtime
    return app
