"""The worker's probe server (bridge/http/probe.py) over real loopback sockets: its routes answer
what the web app's do, and the HTTP edges hold (methods, paths, head bounds, slow clients, a
failing handler, the connection bound, shutdown); and `leadbridge worker` serves it."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bridge.app import create_app
from bridge.http.probe import Answer, Handler, ProbeServer, probe_server
from bridge.processes import bind
from bridge.runtime import Runtime
from tests.delivery_support import Service, env, free_port, wait_ready
from tests.pipeline import CONTACT_MAPPING, SECRET
from tests.pipeline import test_settings as bridge_settings
from tests.servers import exchange, healthz_head, read_until_closed, serve, trickled, until

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n"
OK = b'{"status":"ok"}'


async def _ok() -> Answer:
    return Answer(200, OK)


def _server(routes: dict[str, Handler] | None = None, **bounds: Any) -> ProbeServer:
    limits: dict[str, Any] = {
        "header_timeout_s": 30.0,
        "max_head_bytes": 65_536,
        "max_headers": 100,
        "max_connections": 100,
        "grace_s": 5.0,
    }
    return ProbeServer(routes if routes is not None else {"/healthz": _ok}, **(limits | bounds))


@asynccontextmanager
async def probing(server: ProbeServer) -> AsyncIterator[int]:
    """`server` on a loopback port (listening as soon as it is bound); yields the port."""
    sock = bind("127.0.0.1", 0)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()


async def ask(port: int, request: bytes) -> bytes:
    """Send `request` to the probe server, read the answer until the server closes."""
    return await exchange("127.0.0.1", port, request)


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of an answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


@pytest.fixture
async def runtime(redis_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    """A runtime on the real Valkey with the `contact` mapping loaded (no worker started)."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "contact.yaml").write_text(CONTACT_MAPPING)
    built = Runtime(bridge_settings(mappings), redis_url=redis_url, environ={"CONTACT_SECRET": SECRET})
    built.load_mappings()
    try:
        yield built
    finally:
        await built.close()


# -- what the routes say -----------------------------------------------------------------------------


async def test_the_routes_answer_what_the_web_app_answers(runtime: Runtime) -> None:
    settings = runtime.settings
    async with (
        probing(probe_server(runtime, settings)) as port,
        serve(create_app(settings, runtime=runtime)) as web,
        httpx.AsyncClient(timeout=10) as http,
    ):
        probe = f"http://127.0.0.1:{port}"
        for path in ("/healthz", "/readyz", "/metrics"):
            ours, theirs = await http.get(probe + path), await http.get(web + path)
            assert ours.status_code == theirs.status_code == 200, path
            assert ours.headers["content-type"] == theirs.headers["content-type"], path
            assert ours.headers["content-length"] == str(len(ours.content)), path
            assert ours.headers["connection"] == "close", path
            if path == "/metrics":
                assert "leadbridge_queue_depth 0.0" in ours.text
            else:
                assert ours.json() == theirs.json(), path
        assert (await http.get(probe + "/readyz")).json() == {
            "status": "ready",
            "mappings": 1,
            "queue": "ok",
            "workers": 0,
        }
        assert (await http.get(probe + "/healthz?verbose=1")).content == OK  # query ignored


async def test_readyz_is_503_when_the_queue_is_unreachable(tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "contact.yaml").write_text(CONTACT_MAPPING)
    settings = bridge_settings(mappings)
    down = Runtime(settings, redis_url=f"redis://127.0.0.1:{free_port()}", environ={"CONTACT_SECRET": SECRET})
    down.load_mappings()
    try:
        async with probing(probe_server(down, settings)) as port:
            status, headers, body = parse(await ask(port, b"GET /readyz HTTP/1.1\r\n\r\n"))
            assert status == 503
            assert headers["content-type"] == "application/json"
            assert orjson.loads(body) == {
                "status": "not ready",
                "mappings": 1,
                "queue": "unreachable",
                "workers": 0,
            }
            assert parse(await ask(port, HEALTHZ))[0] == 200  # alive all the same
    finally:
        await down.close()


# -- methods and paths -------------------------------------------------------------------------------


async def test_head_has_the_headers_of_get_and_no_body() -> None:
    async with probing(_server()) as port:
        get_status, get_headers, get_body = parse(await ask(port, HEALTHZ))
        answer = await ask(port, b"HEAD /healthz HTTP/1.1\r\nHost: probe\r\n\r\n")
        status, headers, body = parse(answer)
        assert (status, body) == (200, b"")
        assert answer.endswith(b"\r\n\r\n")
        assert (get_status, get_body) == (200, OK)
        assert headers["content-length"] == get_headers["content-length"] == str(len(OK))
        assert headers["content-type"] == get_headers["content-type"] == "application/json"


async def test_unknown_paths_are_404_and_other_methods_405_with_allow() -> None:
    async with probing(_server()) as port:
        status, headers, body = parse(await ask(port, b"GET /nope HTTP/1.1\r\n\r\n"))
        assert (status, orjson.loads(body)) == (404, {"status": "error", "error": "not found"})
        assert headers["content-length"] == str(len(body))
        assert headers["connection"] == "close"
        for method in (b"POST", b"DELETE", b"OPTIONS", b"PUT"):
            status, headers, body = parse(await ask(port, method + b" /healthz HTTP/1.1\r\n\r\n"))
            assert status == 405, method
            assert headers["allow"] == "GET, HEAD"
            assert orjson.loads(body) == {"status": "error", "error": "method not allowed"}
        # a body is not read, but the answer still reaches the client
        posted = b"POST /healthz HTTP/1.1\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200_000
        assert parse(await ask(port, posted))[0] == 405


@pytest.mark.parametrize(
    "request_line",
    [
        b"hello",
        b"GET /healthz",
        b"GET healthz HTTP/1.1",
        b"GET /healthz HTTP/2.0",
        b"GET  /healthz HTTP/1.1",
        b"GET /he lthz HTTP/1.1",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    ],
)
async def test_a_request_line_that_does_not_parse_is_400(request_line: bytes) -> None:
    async with probing(_server()) as port:
        status, _, body = parse(await ask(port, request_line + b"\r\nHost: probe\r\n\r\n"))
        assert (status, orjson.loads(body)) == (400, {"status": "error", "error": "bad request"})


async def test_a_header_that_does_not_parse_is_400() -> None:
    async with probing(_server()) as port:
        for header in (b"no colon", b" folded: value", b"Bad Name: v", b"X: a\nb"):
            answer = await ask(port, b"GET /healthz HTTP/1.1\r\n" + header + b"\r\n\r\n")
            assert parse(answer)[0] == 400, header


# -- bounds ------------------------------------------------------------------------------------------


async def test_a_head_too_large_or_with_too_many_headers_is_431() -> None:
    async with probing(_server(max_headers=100, max_head_bytes=65_536)) as port:
        # Host + Connection + 98 = 100 headers pass; one more is refused.
        assert parse(await ask(port, healthz_head(extra_headers=98)))[0] == 200
        assert parse(await ask(port, healthz_head(extra_headers=99)))[0] == 431
        assert parse(await ask(port, healthz_head(header_bytes=60_000)))[0] == 200
        assert parse(await ask(port, healthz_head(header_bytes=70_000)))[0] == 431
        status, headers, _ = parse(await ask(port, healthz_head(header_bytes=2_000_000)))
        assert (status, headers["connection"]) == (431, "close")


async def test_a_silent_or_trickling_client_is_cut_off_at_the_header_timeout() -> None:
    async with probing(_server(header_timeout_s=1.0)) as port:
        started = time.monotonic()
        assert await ask(port, b"") == b""  # sent nothing: closed without an answer
        assert 0.9 <= time.monotonic() - started < 4.5
        started = time.monotonic()
        assert await ask(port, b"GET /healthz HTTP/1.1\r\nHost: pro") == b""  # half a head
        assert 0.9 <= time.monotonic() - started < 4.5

        started = time.monotonic()
        assert await trickled("127.0.0.1", port, healthz_head(extra_headers=50)) == b""  # ~80 s in all
        assert 0.9 <= time.monotonic() - started < 4.5


async def test_a_second_client_is_served_while_a_first_is_silent() -> None:
    server = _server(header_timeout_s=30.0)
    async with probing(server) as port:
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
        try:
            await until(lambda: len(server.connections) == 1)
            async with asyncio.timeout(5):  # far less than the silent client may take
                assert parse(await ask(port, HEALTHZ))[0] == 200
            # the first one was waited for, not dropped: it is answered when it speaks
            silent.write(HEALTHZ)
            assert parse(await read_until_closed(silent_reader))[0] == 200
        finally:
            silent.close()


async def test_connections_over_the_bound_are_answered_503() -> None:
    server = _server(max_connections=2)
    async with probing(server) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await until(lambda: len(server.connections) == 2)
        assert parse(await ask(port, HEALTHZ))[0] == 503
        for _, writer in held:
            writer.close()
        await until(lambda: len(server.connections) == 0)
        assert parse(await ask(port, HEALTHZ))[0] == 200


async def test_a_failing_handler_is_a_500_and_a_log_line_without_request_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom() -> Answer:
        raise RuntimeError("the handler broke")

    caplog.set_level(logging.DEBUG)
    async with probing(_server({"/boom": boom, "/healthz": _ok})) as port:
        request = b"GET /boom?token=q-s3cret HTTP/1.1\r\nHost: probe\r\nX-Api-Key: h-s3cret\r\n\r\n"
        status, _, body = parse(await ask(port, request))
        assert (status, orjson.loads(body)) == (500, {"status": "error", "error": "internal server error"})
        assert parse(await ask(port, HEALTHZ))[0] == 200  # still serving
    failures = [r for r in caplog.records if r.name == "bridge.http" and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == ["probe server: /boom failed"]
    assert failures[0].exc_info is not None
    assert "s3cret" not in caplog.text


# -- shutdown ----------------------------------------------------------------------------------------


async def test_shutdown_stops_accepting_closes_waiting_connections_and_lets_answers_finish() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow() -> Answer:
        entered.set()
        await release.wait()
        return Answer(200, OK)

    server = _server({"/slow": slow}, header_timeout_s=30.0, grace_s=10.0)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
        await until(lambda: entered.is_set() and len(server.connections) == 2)

        server.should_exit = True
        assert await read_until_closed(idle_reader) == b""  # closed at once, not after 30 s
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            await asyncio.open_connection("127.0.0.1", port)
        assert not serving.done()  # the answer in progress may finish
        release.set()
        status, _, body = parse(await read_until_closed(busy_reader))
        assert (status, body) == (200, OK)
        await asyncio.wait_for(serving, timeout=5)
        idle_writer.close()
        busy_writer.close()
    finally:
        server.should_exit = True
        release.set()
        await asyncio.wait_for(serving, timeout=10)
        sock.close()


# -- in `leadbridge worker` --------------------------------------------------------------------------


async def test_leadbridge_worker_serves_its_probes_and_stops_on_sigterm(
    redis_url: str, tmp_path: Path
) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "contact.yaml").write_text(CONTACT_MAPPING)
    port = free_port()
    environ = env(
        REDIS_URL=redis_url,
        BRIDGE_MAPPINGS=mappings,
        CONTACT_SECRET=SECRET,
        CONNECT_BASE_URL=f"http://127.0.0.1:{free_port()}",  # never called: nothing is queued
        CONNECT_API_KEY="probe-test-key",
        BRIDGE_HOST="127.0.0.1",
        BRIDGE_WORKER_PROBE_PORT=port,
        BRIDGE_LOG_LEVEL="warning",
    )
    base = f"http://127.0.0.1:{port}"
    worker = Service(["worker"], environ, tmp_path / "worker.log").start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_ready(http, f"{base}/readyz", worker)
            ready = (await http.get(f"{base}/readyz")).json()
            assert ready["status"] == "ready", ready
            assert ready["workers"] >= 1, ready
            assert (await http.get(f"{base}/healthz")).json() == {"status": "ok"}
            metrics = await http.get(f"{base}/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "leadbridge_worker_heartbeat" in metrics.text
            # asyncio's own loop: uvloop buys a worker no speed (bridge/cli.py run_event_loop)
            maps = Path(f"/proc/{worker.proc.pid}/maps").read_text()  # type: ignore[union-attr]
            assert "uvloop" not in maps
            worker.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert await asyncio.to_thread(worker.wait, 15) == 0, worker.log_text()[-2000:]
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{base}/healthz")
    finally:
        worker.stop()
    assert "Traceback" not in worker.log_text()


def test_probe_server_takes_the_bounds_from_the_settings(runtime: Runtime) -> None:
    settings = runtime.settings.model_copy(
        update={
            "header_timeout_s": 3.0,
            "max_header_bytes": 8192,
            "max_headers": 20,
            "max_concurrent_requests": 7,
            "shutdown_grace_s": 4.0,
        }
    )
    server = probe_server(runtime, settings)
    assert (
        server.header_timeout_s,
        server.max_head_bytes,
        server.max_headers,
        server.max_connections,
        server.grace_s,
    ) == (3.0, 8192, 20, 7, 4.0)
    assert sorted(server.routes) == ["/healthz", "/metrics", "/readyz"]
