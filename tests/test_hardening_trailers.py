"""A chunked request's trailers are not request headers: uvicorn's httptools protocol appends them
to the scope's header list (the same list object), so an app that reads its headers after the
body saw them as headers, and a signature sent as a trailer, after a proxy had checked the head,
counted as one."""

from __future__ import annotations

from bridge.settings import Settings
from tests.servers import exchange, serve


async def _names_after_body(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    names = b",".join(name for name, _ in scope["headers"])
    length = str(len(names)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
    await send({"type": "http.response.body", "body": names})


async def test_trailers_do_not_become_headers() -> None:
    async with serve(_names_after_body, settings=Settings()) as url:
        port = int(url.rsplit(":", 1)[1])
        head = (
            b"POST /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\nTrailer: X-Signature\r\n\r\n"
        )
        answer = await exchange("127.0.0.1", port, head + b"2\r\n{}\r\n0\r\nX-Signature: forged\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert b"host" in body.split(b",")  # the app did see the head's headers
    assert b"x-signature" not in body.split(b","), body


async def test_many_trailers_are_cut_off_at_the_head_bound() -> None:
    async with serve(_names_after_body, settings=Settings(BRIDGE_MAX_HEADER_BYTES=4096)) as url:
        port = int(url.rsplit(":", 1)[1])
        head = b"POST /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"a" * 100) for i in range(40))  # 4.3 KiB
        answer = await exchange("127.0.0.1", port, head + b"2\r\n{}\r\n0\r\n" + trailers + b"\r\n")
    assert answer == b"", answer[:80]  # closed, not answered
