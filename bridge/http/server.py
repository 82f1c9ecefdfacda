"""uvicorn as leadbridge runs it, for the web app (`run`, `serve`) and the sandbox: the server
without its own signal handling, and its settings with the bounds of docs/security.md.

Imported only by processes that serve one of those (the worker's probe server is
bridge/http/probe.py, without uvicorn).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from bridge.http.protocol import bounded_protocol
from bridge.settings import Settings


class Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: the process handles SIGINT/SIGTERM once,
    for every server it runs, and then shuts them down in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_config(app: Starlette, host: str, port: int, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for every server we run (the bounds are in docs/security.md)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=bounded_protocol(settings.header_timeout_s, settings.max_headers, settings.max_header_bytes),
        # Connections + requests in progress beyond this bound are answered 503 by uvicorn.
        limit_concurrency=settings.max_concurrent_requests,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s)),
        server_header=False,
    )


def web_server(app: Starlette, host: str, port: int, settings: Settings) -> Server:
    return Server(server_config(app, host, port, settings))
