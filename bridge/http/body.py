"""Reading a request body within a size limit and a time limit.

A declared Content-Length over the limit is refused before anything is read; a body that grows
past the limit while streaming is refused as soon as it does (the rest is never read); a body
that does not arrive within the read timeout is a 408.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from bridge.errors import BodyTooLarge, InvalidBody, RequestTimeout


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
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
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge()
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout() from None
    except ClientDisconnect:
        raise InvalidBody("client disconnected") from None
    return b"".join(chunks)
