"""HTTP client micro-benchmark: the worker's upstream client under 1 and 100 requests in flight.

    python -m bench.http_clients --url http://127.0.0.1:P/connect/table_entries [--seconds 3] [--json]

The server should answer at once (`python -m bench.baselines instant --port P`). Each client
POSTs the same ~600-byte JSON lead body with the worker's headers for `seconds`, with
`concurrency` tasks each sending one request after the other. Clients:

    httpx          httpx.AsyncClient with leadbridge's limits (100 connections, 100 kept alive)
    httpx-aiohttp  the same AsyncClient API on httpx-aiohttp's AiohttpTransport (same limits)
    aiohttp        a bare aiohttp.ClientSession (what the transport costs on top of it)

Reported: requests/s, and the client's own CPU time per request (process time / requests), the
figure that matters on a shared machine: it is what the worker process spends per upstream call.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

BODY = orjson.dumps(
    {
        "tableId": "2b7c9a54-3f1e-4c8a-9d6b-1a2b3c4d5e6f",
        "data": {
            "email": "ada@bench.example",
            "name": "Ada Lovelace",
            "phone": "+4930901820",
            "message": "x" * 400,
        },
        "leadStateId": "6f1d2c3b-8a4e-4b5f-9c6d-7e8f9a0b1c01",
    }
)
HEADERS = {
    "Authorization": "Bearer sandbox-key",
    "Content-Type": "application/json",
    "Idempotency-Key": "lb-0123456789abcdef0123456789abcdef-0-c",
}
CLIENTS = ("httpx", "httpx-aiohttp", "aiohttp")

Send = Callable[[], Awaitable[int]]


async def _drive(send: Send, concurrency: int, seconds: float) -> dict[str, float]:
    for _ in range(min(concurrency, 10)):  # warm the pool
        await send()
    stop = time.perf_counter() + seconds
    count = 0

    async def loop() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            status = await send()
            if status != 201:
                raise RuntimeError(f"unexpected status {status}")
            count += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"req_per_s": round(count / wall), "client_cpu_us_per_req": round(cpu / max(count, 1) * 1e6, 1)}


async def measure(client: str, url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    import aiohttp
    import httpx

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    timeout = httpx.Timeout(10.0, connect=5.0)
    if client == "aiohttp":
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:

            async def send_aiohttp() -> int:
                async with session.post(url, data=BODY, headers=HEADERS) as response:
                    await response.read()
                    return response.status

            result = await _drive(send_aiohttp, concurrency, seconds)
    else:
        transport: httpx.AsyncBaseTransport | None = None
        if client == "httpx-aiohttp":
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=limits)
        async with httpx.AsyncClient(limits=limits, timeout=timeout, transport=transport) as http:

            async def send_httpx() -> int:
                response = await http.request("POST", url, content=BODY, headers=HEADERS)
                response.json()
                return response.status_code

            result = await _drive(send_httpx, concurrency, seconds)
    return {"client": client, "concurrency": concurrency, **result}


async def run_all(url: str, seconds: float) -> list[dict[str, Any]]:
    return [await measure(c, url, n, seconds) for n in (1, 100) for c in CLIENTS]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_clients")
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import uvloop

    results = uvloop.run(run_all(args.url, args.seconds))
    if args.json:
        sys.stdout.write(orjson.dumps(results).decode() + "\n")
        return
    for result in results:
        print(result)


if __name__ == "__main__":
    main()
