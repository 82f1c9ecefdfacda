"""leadbridge with experimental changes applied at start-up, to put a number on a proposed change
before it is made in bridge/ (the bench never edits the product).

    BENCH_PATCHES=nodelay,uvloop python -m bench.lb_patched serve|worker|run

Used by `bench/run.py --patch ...` and `bench/profile.py --patch ...` instead of
`python -m bridge`. Each patch mirrors a change proposed in docs/performance.md:

    nodelay  listening sockets made with IPPROTO_TCP, so asyncio sets TCP_NODELAY on accepted
             connections (bridge/processes.py `bind()` makes them with proto 0, and asyncio's
             `_set_nodelay` skips those: every response then waits ~40 ms for a delayed ACK)
    uvloop   run the process on uvloop (the CLI's `asyncio.run` ignores uvicorn's loop="auto")
    aiohttp  the worker's upstream client on httpx-aiohttp's AiohttpTransport (same limits)
    sniffio  what installing `sniffio` does: httpcore imports it on every request and connection
             event (`current_async_library`), and without it each import is a failed search of
             sys.path (stat calls); a stand-in module answering "asyncio" ends that
    nostore  not a proposal but a measuring stick: every webhook is answered 202 at once and
             nothing is stored (`Accepter.accept` returns without Valkey). What `serve` does at
             64 connections with it is the ceiling of its HTTP path (verify, parse, answer):
             no store, however fast, could take it past that (the bench's "storing skipped" row)
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any


def _nodelay() -> None:
    """Landed: `bridge.processes.bind` creates its sockets with IPPROTO_TCP (TCP_NODELAY)."""


def _uvloop() -> None:
    import uvloop

    asyncio.run = uvloop.run


def _aiohttp() -> None:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    from bridge.connect import client

    original = client.build_http_client

    def build_http_client(
        *, timeout_s: float, max_connections: int, transport: Any = None
    ) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return original(
            timeout_s=timeout_s,
            max_connections=max_connections,
            transport=transport or AiohttpTransport(limits=limits),
        )

    # Runtime.start_worker() imports build_http_client from bridge.connect.client when it runs.
    client.build_http_client = build_http_client


def _sniffio() -> None:
    import types

    try:
        import sniffio  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("sniffio")
        stand_in.current_async_library = lambda: "asyncio"  # type: ignore[attr-defined]
        sys.modules["sniffio"] = stand_in


def _nostore() -> None:
    from bridge.queue import ingest

    async def accept(self: ingest.Accepter, incoming: ingest.Incoming) -> ingest.Accepted:
        delivery_id = ingest.new_delivery_id(counter=self._next_counter())
        return ingest.Accepted(delivery_id=delivery_id, duplicate=False)

    ingest.Accepter.accept = accept  # type: ignore[method-assign]


PATCHES = {
    "nodelay": _nodelay,
    "uvloop": _uvloop,
    "aiohttp": _aiohttp,
    "sniffio": _sniffio,
    "nostore": _nostore,
}


def main() -> None:
    patches = [p.strip() for p in os.environ.get("BENCH_PATCHES", "").split(",") if p.strip()]
    unknown = sorted(set(patches) - set(PATCHES))
    if unknown:
        raise SystemExit(f"unknown patch(es) {unknown}; known: {', '.join(PATCHES)}")
    for name in patches:
        PATCHES[name]()
    from bridge.cli import main as cli_main

    cli_main(sys.argv[1:])


if __name__ == "__main__":
    main()
