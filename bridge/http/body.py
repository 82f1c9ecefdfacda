"""Reading a request body within a size limit and a time limit, straight from ASGI `receive`.

A declared Content-Length over the limit is refused before anything is read; a body that grows
past the limit while streaming is refused as soon as it does (the rest is never read); a body
that does not arrive within the read timeout is a 408.
"""

from __future__ import annotations

import asyncio

from starlette.types import Receive

from bridge.errors import BodyTooLarge, InvalidBody, RequestTimeout


async def read_body(receive: Receive, declared: str | None, max_bytes: int, timeout_s: float) -> bytes:
    """The body of the request `receive` belongs to; `declared` is its Content-Length header."""
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise BodyTooLarge()
        except ValueError:
            raise InvalidBody("invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect
                    raise InvalidBody("client disconnected")
                chunk: bytes = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BodyTooLarge()
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestTimeout() from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
