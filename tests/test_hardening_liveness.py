"""The liveness probe under a burst: uvicorn answers 503 to every request once
BRIDGE_MAX_CONCURRENT_REQUESTS connections are open (idle keep-alive ones included), and a
liveness probe failing three times restarts the pod just when it is needed."""

from __future__ import annotations

import asyncio

from bridge.settings import Settings
from tests.servers import exchange, serve
from tests.test_hardening_long_lines import _ok


async def test_liveness_is_answered_past_the_concurrency_limit_and_nothing_else_is() -> None:
    async with serve(_ok, settings=Settings(BRIDGE_MAX_CONCURRENT_REQUESTS=4)) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]  # a burst's
        try:
            live = await exchange(
                "127.0.0.1", port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            ready = await exchange(
                "127.0.0.1", port, b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            hook = await exchange(
                "127.0.0.1",
                port,
                b"POST /hooks/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            )
        finally:
            for _, writer in idle:
                writer.close()
    assert live.startswith(b"HTTP/1.1 200"), live[:60]
    assert ready.startswith(b"HTTP/1.1 503"), ready[:60]  # readiness still says "overloaded"
    assert hook.startswith(b"HTTP/1.1 503"), hook[:60]
