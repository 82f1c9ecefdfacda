"""A fixed-rate load generator for signed webhooks (wrk has no rate limit and wrk2 is not packaged).

    python -m bench.loadgen --url http://127.0.0.1:P/hooks/bench-hmac --rate 500 --duration 15 \
        --secret S --template body.json --prefix run1 --out result.json

Request i is due at start + i/rate (open loop: a slow server does not slow the schedule down; a
request waits for a free connection instead, and its latency counts from when it was due, so
queueing is not hidden; one sent at once on a free connection counts from when it was sent, as
the dispatcher wakes once a millisecond). Each request is a new event: the body template's `__ID__` becomes
`PREFIX-i`, signed `X-Signature: sha256=<hex HMAC-SHA256>`. HTTP/1.1 keep-alive, one asyncio
Protocol per connection on uvloop, driven by callbacks: about 20-30 microseconds of CPU per
request (asyncio streams took about three times that), so the generator takes little of the two
cores from the server it measures. The output JSON has the totals, the status counts,
and per request [id, start, answered, status] (unix seconds; start as above) for the
202-to-upstream latency.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import hmac
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
Record = tuple[str, float, float, int]
TICK_S = 0.001


class Target:
    def __init__(self, url: str, secret: str, template: str, prefix: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.key = secret.encode()
        self.template = template
        self.prefix = prefix

    def request(self, index: int) -> tuple[str, bytes]:
        bench_id = f"{self.prefix}-{index}"
        body = self.template.replace("__ID__", bench_id).encode()
        signature = hmac.new(self.key, body, hashlib.sha256).hexdigest()
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nX-Signature: sha256={signature}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return bench_id, head.encode() + body


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time, driven by callbacks: no task, stream or
    future per request (asyncio streams cost about three times the CPU per request, which the
    measured server then lacks on a two-core machine)."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.current: tuple[str, float] | None = None  # (bench id, start) of the request in flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.load.idle(self)

    def send(self, index: int, start: float) -> None:
        bench_id, raw = self.load.target.request(index)
        self.current = (bench_id, start)
        self.load.in_flight += 1
        assert self.transport is not None
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.current is None:
            return
        head = bytes(self.buffer[: end + 4])
        match = CONTENT_LENGTH.search(head)
        if len(self.buffer) < end + 4 + (int(match.group(1)) if match else 0):
            return
        del self.buffer[:]
        self.finish(int(head[9:12]))
        self.load.idle(self)

    def finish(self, status: int) -> None:
        if self.current is not None:
            bench_id, start = self.current
            self.current = None
            self.load.in_flight -= 1
            self.load.records.append((bench_id, start, time.time(), status))

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(0)
        self.transport = None
        self.load.lost(self)


class Load:
    """Requests due at start + i/rate, handed to idle connections in order; a request that finds
    none waits in `backlog`, and its latency still counts from when it was due."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.in_flight = 0  # requests sent and not yet answered
        self.records: list[Record] = []
        self.backlog: collections.deque[tuple[int, float]] = collections.deque()
        self.free: collections.deque[Connection] = collections.deque()
        self.open: set[Connection] = set()
        self.closing = False
        self.drained = asyncio.Event()  # set whenever nothing is waiting or in flight

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _transport, connection = await loop.create_connection(
            lambda: Connection(self), self.target.host, self.target.port
        )
        self.open.add(connection)

    def due(self, index: int, due: float) -> None:
        """Send request `index` now. Its latency counts from now if a connection is free (the
        dispatcher wakes once a millisecond, so it may be up to that late, which is not the
        server's doing), else from when it was due (it waits for the server)."""
        if self.free:
            self.free.popleft().send(index, time.time())
        else:
            self.backlog.append((index, due))

    def idle(self, connection: Connection) -> None:
        if self.backlog:
            connection.send(*self.backlog.popleft())
        else:
            self.free.append(connection)
            self._check_drained()

    def _check_drained(self) -> None:
        if not self.busy():
            self.drained.set()

    def lost(self, connection: Connection) -> None:
        self.open.discard(connection)
        with contextlib.suppress(ValueError):
            self.free.remove(connection)
        if not self.closing:  # a connection the server closed: open another in its place
            asyncio.get_running_loop().create_task(self.connect())
        self._check_drained()

    def busy(self) -> bool:
        return bool(self.backlog) or self.in_flight > 0

    def close(self) -> None:
        self.closing = True
        for connection in list(self.open):
            if connection.transport is not None:
                connection.transport.close()


async def run(
    target: Target, rate: float, duration_s: float, connections: int, drain_s: float
) -> dict[str, Any]:
    load = Load(target)
    await asyncio.gather(*(load.connect() for _ in range(connections)))
    total = int(rate * duration_s)
    begin = time.time() + 0.1
    index = 0
    while index < total:
        now = time.time()
        while index < total and begin + index / rate <= now:  # everything due by now
            load.due(index, begin + index / rate)
            index += 1
        if index < total:  # the event loop's timers have millisecond steps: never spin below that
            await asyncio.sleep(max(TICK_S, begin + index / rate - time.time()))
    dispatched_at = time.time()
    load.drained.clear()
    if load.busy():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.drained.wait(), drain_s)
    load.close()
    records = load.records
    statuses: dict[str, int] = {}
    for record in records:
        statuses[str(record[3])] = statuses.get(str(record[3]), 0) + 1
    latencies = sorted(done - start for _, start, done, _ in records)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else 0.0

    return {
        "rate": rate,
        "duration_s": duration_s,
        "scheduled": total,
        "completed": len(records),
        "dispatch_lag_s": round(dispatched_at - (begin + duration_s), 3),
        "statuses": statuses,
        "latency_ms": {"p50": pct(50), "p99": pct(99), "max": latencies[-1] * 1000 if latencies else 0.0},
        "records": records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--template", type=Path, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for answers at the end")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import uvloop

    target = Target(args.url, args.secret, args.template.read_text().strip(), args.prefix)
    result = uvloop.run(run(target, args.rate, args.duration, args.connections, args.drain))
    args.out.write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
