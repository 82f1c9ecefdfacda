"""The benchmark's upstream: leadbridge's Connect sandbox, plus a clock on every create and patch.

    python -m bench.sandbox_server --port P

A small ASGI middleware in front of `create_sandbox_app()` notes the wall-clock time at which each
`POST /connect/table_entries` arrives, and, once it has been answered 201 (not an idempotent
replay), keys that time by the bench id found in the lead's e-mail (`<id>@bench.example`); the
same for each `PATCH /connect/table_entries/{id}` answered 200 whose merge patch carries the
e-mail. The bench reads them back to count deliveries and to measure 202-to-upstream latency:

    GET  /bench/stats      {"creates": n, "first": t, "last": t,                (unix seconds)
                            "patches": n, "patch_first": t, "patch_last": t}
    GET  /bench/arrivals   {"arrivals": {id: t, ...}}                           (creates)
    POST /bench/reset      forget them, and reset the sandbox (entries, events, faults off)
    POST /bench/reset-clock  forget them only (the entries stay, to be patched)

Everything else (`/connect/...`, `/sandbox/...`, `PUT /sandbox/faults` for latency) is the
sandbox itself. Served with one uvicorn worker, configured like leadbridge's.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.sandbox import create_sandbox_app

CREATE_PATH = "/connect/table_entries"
REPLAYED_HEADER = b"idempotent-replayed"


class Arrivals:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.first = 0.0
        self.last = 0.0

    def add(self, bench_id: str, at: float) -> None:
        if bench_id in self.times:
            return
        self.times[bench_id] = at
        self.first = at if not self.first else min(self.first, at)
        self.last = max(self.last, at)


def _bench_id(body: bytes) -> str | None:
    try:
        document = orjson.loads(body)
        email = document["data"]["email"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return str(email).split("@", 1)[0] if isinstance(email, str) else None


def _json(send: Send, document: Any) -> Any:
    body = orjson.dumps(document)

    async def reply() -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return reply()


class ClockedSandbox:
    def __init__(self, app: ASGIApp, reset: Any) -> None:
        self.app = app
        self.reset_sandbox = reset
        self.arrivals = Arrivals()
        self.patched = Arrivals()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path.startswith("/bench/"):
            await self._control(path, method, send)
            return
        if method == "POST" and path == CREATE_PATH:
            arrivals, answered = self.arrivals, 201
        elif method == "PATCH" and path.startswith(CREATE_PATH + "/"):
            arrivals, answered = self.patched, 200
        else:
            await self.app(scope, receive, send)
            return
        arrived = time.time()
        chunks: list[bytes] = []
        outcome: dict[str, Any] = {}

        async def tapped_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def tapped_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                outcome["replayed"] = any(k.lower() == REPLAYED_HEADER for k, _ in message.get("headers", []))
            await send(message)

        await self.app(scope, tapped_receive, tapped_send)
        if outcome.get("status") == answered and not outcome.get("replayed"):
            bench_id = _bench_id(b"".join(chunks))
            if bench_id is not None:
                arrivals.add(bench_id, arrived)

    async def _control(self, path: str, method: str, send: Send) -> None:
        arrivals, patched = self.arrivals, self.patched
        if path == "/bench/stats":
            document: Any = {
                "creates": len(arrivals.times),
                "first": arrivals.first,
                "last": arrivals.last,
                "patches": len(patched.times),
                "patch_first": patched.first,
                "patch_last": patched.last,
            }
        elif path == "/bench/arrivals":
            document = {"arrivals": arrivals.times}
        elif path in ("/bench/reset", "/bench/reset-clock") and method == "POST":
            self.arrivals, self.patched = Arrivals(), Arrivals()
            if path == "/bench/reset":
                self.reset_sandbox()
            document = {"status": "reset"}
        else:
            document = {"error": "unknown bench route"}
        await _json(send, document)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_server")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    sandbox = create_sandbox_app()
    app = ClockedSandbox(sandbox, sandbox.state.sandbox.reset)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        server_header=False,
    )


if __name__ == "__main__":
    main()
