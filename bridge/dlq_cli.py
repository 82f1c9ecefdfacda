"""`leadbridge dlq list|show|replay|purge`: the dead-letter queue from the command line.

It talks to the same Redis as the running service (REDIS_URL, or the embedded server under
BRIDGE_DATA_DIR, attached to if running); a replay is picked up by any running worker.
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson
from redis.asyncio import Redis

from bridge.queue import deliveries
from bridge.runtime import make_redis
from bridge.settings import Settings


async def run(args: argparse.Namespace, settings: Settings, url: str) -> int:
    redis = make_redis(url)
    try:
        return await _run(args, settings, redis)
    finally:
        await redis.aclose()


async def _run(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    command = args.dlq_command
    if command == "list":
        ids = await deliveries.dlq_ids(redis)
        if not ids:
            print("the dead-letter queue is empty")
            return 0
        print(f"{'ID':<34} {'MAPPING':<24} {'DIED (UTC)':<20} REASON")
        for delivery_id in ids:
            record = await deliveries.load(redis, delivery_id)
            if record is None:
                continue
            died = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.dead_at or record.received_at))
            print(f"{record.id:<34} {record.mapping:<24} {died:<20} {record.reason or ''}")
        return 0
    targets = await deliveries.dlq_ids(redis) if getattr(args, "all", False) else [args.id]
    for delivery_id in targets:
        record = await deliveries.load(redis, delivery_id)
        if record is None or not await deliveries.in_dlq(redis, delivery_id):
            print(f"leadbridge: {delivery_id} is not in the dead-letter queue", file=sys.stderr)
            return 1
        if command == "show":
            sys.stdout.write(
                orjson.dumps(record.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n"
            )
        elif command == "replay":
            await deliveries.enqueue_again(redis, delivery_id, settings.retention_s)
            print(f"{delivery_id}: queued for replay (it leaves the dead-letter queue once delivered)")
        elif command == "purge":
            await deliveries.purge(redis, delivery_id)
            print(f"{delivery_id}: purged")
    if not targets:
        print("the dead-letter queue is empty")
    return 0
