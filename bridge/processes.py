"""The long-running processes behind `run`, `serve`, `worker` and `sandbox`.

Each builds its resources, serves until SIGINT/SIGTERM, then shuts down: at the same time, stop
taking webhooks (uvicorn drains in-flight requests) and stop taking jobs (running ones get to
finish), both within BRIDGE_SHUTDOWN_GRACE_S; then close the pools, and last stop the embedded
Valkey server if this process started it.

The web app and the sandbox run on uvicorn (bridge/http/server.py); `worker` serves its probes
with bridge/http/probe.py on plain asyncio, and never imports uvicorn or Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.errors import ConfigError
from bridge.runtime import Runtime
from bridge.settings import Settings, redacted_url

log = logging.getLogger("bridge")


@dataclass(frozen=True)
class Upstream:
    base_url: str
    api_key: str


class Serving(Protocol):
    """A server `_serve_until_signal` runs: uvicorn's (bridge/http/server.py) or the worker's
    probe server (bridge/http/probe.py). Setting `should_exit` stops it accepting at once."""

    should_exit: bool

    async def serve(self, sockets: list[socket.socket] | None = None) -> None: ...


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front, so the real port is known before serving (port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets created with it, and
    # without it every response waits ~40 ms for Nagle + delayed ACK (measured: docs/performance.md).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _serve_until_signal(
    servers: list[tuple[Serving, socket.socket]],
    on_stop: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run servers until SIGINT/SIGTERM (handled here, once, for all of them); then
    shut them down and run `on_stop` (the worker's drain) at the same time, so that the whole
    shutdown fits in one BRIDGE_SHUTDOWN_GRACE_S."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks = []
    for server, sock in servers:
        tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopping: asyncio.Task[None] | None = asyncio.create_task(on_stop()) if on_stop is not None else None
    for server, _sock in servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    if stopping is not None:
        await stopping
    waiter.cancel()
    for task in tasks:
        if task in done and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def run_all(
    settings: Settings,
    *,
    redis_url: str,
    environ: Mapping[str, str],
    upstream: Upstream | None,
    web: bool,
    worker: bool,
    sandbox_sock: socket.socket | None = None,
    banner: bool = False,
) -> None:
    """`run` (web + worker [+ the sandbox on `sandbox_sock`]), `serve` (web) or `worker` (worker
    + probe server)."""
    servers: list[tuple[Serving, socket.socket]] = []
    if sandbox_sock is not None:
        from bridge.http.server import web_server
        from bridge.sandbox import DEMO_API_KEY, create_sandbox_app

        port = sandbox_sock.getsockname()[1]
        sandbox = web_server(create_sandbox_app(DEMO_API_KEY), settings.host, port, settings)
        upstream = Upstream(f"http://{settings.host}:{port}", DEMO_API_KEY)
        servers.append((sandbox, sandbox_sock))
    runtime = Runtime(
        settings,
        redis_url=redis_url,
        environ=environ,
        upstream=(upstream.base_url, upstream.api_key) if upstream else None,
    )
    try:
        runtime.load_mappings()
        runtime.start_background()
        if worker:
            await runtime.start_worker()
        port = settings.port if web else settings.worker_probe_port
        server: Serving
        if web:
            from bridge.app import create_app  # the webhook routes: not loaded by a worker
            from bridge.http.server import web_server

            server = web_server(create_app(settings, runtime=runtime), settings.host, port, settings)
        else:
            from bridge.http.probe import probe_server  # no uvicorn, Starlette or anyio

            server = probe_server(runtime, settings)
        sock = bind(settings.host, port)
        servers.append((server, sock))
        if banner:
            _print_banner(f"http://{settings.host}:{sock.getsockname()[1]}", runtime, upstream)
        # Everything built so far (modules, mappings, pydantic schemas) lives as long as the
        # process: keep it out of the cyclic collector's work, so full collections stay short.
        gc.collect()
        gc.freeze()
        await _serve_until_signal(servers, on_stop=runtime.stop_worker if worker else None)
    finally:
        await runtime.close()


def _print_banner(base: str, runtime: Runtime, upstream: Upstream | None) -> None:
    upstream_url = upstream.base_url if upstream else runtime.settings.connect_base_url
    lines = [
        "",
        f"leadbridge is running: webhooks at {base}/hooks/<mapping>",
        f"  mappings loaded: {', '.join(sorted(runtime.mappings.current.names)) or '(none)'}",
        f"  upstream: {redacted_url(upstream_url) if upstream_url else '(not set)'}",
        f"  queue: {redacted_url(runtime.redis_url)}",
        f"  metrics: {base}/metrics   health: {base}/readyz",
    ]
    if upstream is not None and "website-contact" in runtime.mappings.current.names:
        lines += [
            "",
            "Send a first signed webhook (in another terminal):",
            f"  ./dev send-sample website-contact --url {base}",
            "Then see the lead and its automation events in the sandbox:",
            f"  curl -s {upstream.base_url}/sandbox/entries",
            f"  curl -s {upstream.base_url}/sandbox/events",
            "",
        ]
    print("\n".join(lines), file=sys.stderr, flush=True)
