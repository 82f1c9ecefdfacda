"""The custom HTTP protocol against clients that keep sending a body nobody reads."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from tests.pipeline import pipeline
from tests.test_hardening_http import served


async def _drip(writer: asyncio.StreamWriter, interval_s: float) -> None:
    with contextlib.suppress(ConnectionError):
        while True:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(interval_s)


async def _held_after_early_answer(host: str, port: int, head: bytes) -> tuple[bytes, float]:
    """Send `head` (a big declared body), read the early answer, then drip the body a byte at a
    time: how long until the server closes the connection (capped at 8 s)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head)
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.readuntil(b"\r\n\r\n")
    dripper = asyncio.create_task(_drip(writer, 0.2))
    started = time.monotonic()
    try:
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(8):
                while await reader.read(65536):
                    pass
    finally:
        dripper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dripper
        writer.close()
    return answer, time.monotonic() - started


async def test_a_body_dripped_after_an_early_answer_does_not_hold_the_connection(
    redis_url: str, tmp_path: Path
) -> None:
    async with pipeline(redis_url, tmp_path / "mappings", worker=False) as pipe:
        settings = pipe.runtime.settings.model_copy(
            update={"keep_alive_timeout_s": 1, "header_timeout_s": 1.0, "read_timeout_s": 1.0}
        )
        async with served(settings, pipe) as (host, port, _):
            for path, length, status in (
                (b"/hooks/no-such-mapping", 100_000, b"404"),
                (b"/hooks/contact", 10_000_000, b"413"),
            ):
                head = (
                    b"POST " + path + b" HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % length
                )
                answer, held = await _held_after_early_answer(host, port, head)
                assert answer.startswith(b"HTTP/1.1 " + status), answer
                # every bound is 1 s: the connection must not outlive them by much
                assert held < 5, (path, held)


async def test_a_refusal_before_100_continue_closes_the_connection(redis_url: str, tmp_path: Path) -> None:
    """The client waited for `100 Continue` and got a 404 instead: it never sends the body. On a
    connection kept alive, its next request would be read as that body (and go unanswered)."""
    async with (
        pipeline(redis_url, tmp_path / "mappings", worker=False) as pipe,
        served(pipe.runtime.settings, pipe) as (host, port, _),
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /hooks/no-such-mapping HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 40\r\n\r\n"
        )
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404"), head
        assert b"connection: close" in head.lower(), head
        with contextlib.suppress(ConnectionError):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
            await writer.drain()
        rest = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5):
                while chunk := await reader.read(65536):
                    rest += chunk
        writer.close()
        # closed after the 404's body; never a second, desynchronised answer
        assert b"HTTP/1.1" not in rest, rest
