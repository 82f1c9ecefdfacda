"""The durable accept alone: `Accepter.accept` from concurrent producers into an embedded Valkey.

    python -m bench.accept_bench [--deliveries 60000] [--producers 64] [--no-rewrite]

No HTTP: what the ingest batch costs the web process (client CPU per delivery) and the store
(Valkey CPU per delivery, its fsync stalls and AOF rewrites), with the shipped configuration
(`appendfsync always`). `--no-rewrite` turns automatic AOF rewrites off for the run, to see what
they add to the tail. Prints one block of figures; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = (ROOT / "bench" / "payload.json").read_bytes()
HEADERS = {"content-type": "application/json"}


async def run(deliveries: int, producers: int, rewrite: bool) -> None:
    import psutil

    from bridge.queue.embedded import EmbeddedValkey
    from bridge.queue.ingest import Accepter, Incoming
    from bridge.runtime import make_redis

    with tempfile.TemporaryDirectory() as work:
        server = EmbeddedValkey(Path(work) / "valkey").start()
        try:
            redis = make_redis(server.url)
            await redis.config_set("latency-monitor-threshold", 1)
            if not rewrite:
                await redis.config_set("auto-aof-rewrite-percentage", 0)
            valkey = psutil.Process(int((await redis.info("server"))["process_id"]))
            accepter = Accepter(redis, dedupe_window_s=600, retention_s=600)
            sent = 0
            latencies: list[float] = []

            async def producer(n: int) -> None:
                nonlocal sent
                while sent < deliveries:
                    sent += 1
                    started = time.perf_counter()
                    incoming = Incoming(
                        "bench", "hmac", f"e{n}-{sent}", BODY, {"content-type": "application/json"}
                    )
                    await accepter.accept(incoming)
                    latencies.append(time.perf_counter() - started)

            valkey_cpu = sum(valkey.cpu_times()[:2])
            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(producer(n) for n in range(producers)))
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
            valkey_cpu = sum(valkey.cpu_times()[:2]) - valkey_cpu
            latencies.sort()
            persistence = await redis.info("persistence")
            latest = await redis.execute_command("LATENCY", "LATEST")
            stall = max((int(e[3]) for e in latest if e[0] == b"aof-fsync-always"), default=0)
            p50, p99 = (latencies[int(len(latencies) * q)] * 1e3 for q in (0.5, 0.99))
            print(f"{sent:,} deliveries, {producers} producers, {elapsed:.1f} s: {sent / elapsed:,.0f}/s")
            print(f"  client CPU {cpu / sent * 1e6:.1f} us/delivery")
            print(f"  Valkey CPU {valkey_cpu / sent * 1e6:.1f} us/delivery")
            print(f"  accept latency p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {latencies[-1] * 1e3:.1f} ms")
            print(f"  AOF rewrites {persistence['aof_rewrites']}, worst fsync stall {stall} ms")
            await redis.aclose()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=60_000)
    parser.add_argument("--producers", type=int, default=64)
    parser.add_argument("--no-rewrite", action="store_true", help="no automatic AOF rewrite during the run")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import uvloop

    uvloop.run(run(args.deliveries, args.producers, rewrite=not args.no_rewrite))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
