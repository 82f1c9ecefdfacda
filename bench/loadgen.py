"""A fixed-rate load generator for signed webhooks (wrk has no rate limit and wrk2 is not packaged).

    python -m bench.loadgen --url http://127.0.0.1:P/hooks/bench-hmac --rate 500 --duration 15 \
        --secret S --template body.json --prefix run1 --out result.json

Request i is due at start + i/rate (open loop: a slow server does not slow the schedule down; a
request waits for a free connection instead, and its latency counts from when it was due, so
queueing is not hidden). Each request is a new event: the body template's `__ID__` becomes
`PREFIX-i`, signed `X-Signature: sha256=<hex HMAC-SHA256>`. HTTP/1.1 keep-alive over raw asyncio
streams on uvloop: a few tens of microseconds of CPU per request, so the generator takes little
of the two cores from the server it measures. The output JSON has the totals, the status counts,
and per request [id, due, answered, status] (unix seconds) for the 202-to-upstream latency.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = CONTENT_LENGTH.search(head)
    if match and int(match.group(1)):
        await reader.readexactly(int(match.group(1)))
    return status


async def connection(
    target: Target, queue: asyncio.Queue[tuple[int, float] | None], records: list[Record]
) -> None:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        while (item := await queue.get()) is not None:
            index, due = item
            bench_id, raw = target.request(index)
            try:
                status = await _exchange(reader, writer, raw)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection(target.host, target.port)
            records.append((bench_id, due, time.time(), status))
    finally:
        writer.close()


async def run(
    target: Target, rate: float, duration_s: float, connections: int, drain_s: float
) -> dict[str, Any]:
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    records: list[Record] = []
    workers = [asyncio.create_task(connection(target, queue, records)) for _ in range(connections)]
    total = int(rate * duration_s)
    start = time.time() + 0.1
    for index in range(total):
        due = start + index / rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((index, due))
    dispatched_at = time.time()
    for _ in workers:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=drain_s)
    for task in pending:
        task.cancel()
    for task in workers:
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await task
    statuses: dict[str, int] = {}
    for record in records:
        statuses[str(record[3])] = statuses.get(str(record[3]), 0) + 1
    latencies = sorted(done - due for _, due, done, _ in records)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else 0.0

    return {
        "rate": rate,
        "duration_s": duration_s,
        "scheduled": total,
        "completed": len(records),
        "dispatch_lag_s": round(dispatched_at - (start + duration_s), 3),
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
