"""`leadbridge dlq list|show|replay|purge`: the dead-letter queue from the command line.

It talks to the same Redis as the running service (REDIS_URL, or the embedded server under
BRIDGE_DATA_DIR, attached to if running); a replay is picked up by any running worker, which maps
the delivery again with its current mappings, keeps its idempotency keys (a command that already
reached the upstream is not sent again) and removes it from the DLQ once delivered.

Exit status: 0 done; 1 an id that is not in the DLQ (replayed, purged, expired or never there),
one whose replay is running (replay, purge) or queued (purge), or the queue cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.queue import deliveries
from bridge.queue.crypto import Keyring
from bridge.runtime import make_redis
from bridge.settings import Settings


async def run(args: argparse.Namespace, settings: Settings, url: str) -> int:
    redis = make_redis(url)
    try:
        return await _run(args, settings, redis)
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        print(
            f"leadbridge: cannot reach the queue ({type(exc).__name__}); is REDIS_URL right?",
            file=sys.stderr,
        )
        return 1
    except RedisError as exc:
        # Reached, but it refused (a replica after a failover: READONLY; its maxmemory: OOM).
        # Its own message names the cause and holds no lead value.
        print(f"leadbridge: the queue refused the command ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()


async def _run(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    command = args.dlq_command
    if command == "list":
        return await _list(redis, Keyring.from_settings(settings))
    everything = bool(getattr(args, "all", False))
    targets = await deliveries.dlq_ids(redis, limit=None) if everything else [args.id]
    if not targets:
        print("the dead-letter queue is empty")
        return 0
    keyring = Keyring.from_settings(settings)
    done = 0
    for delivery_id in targets:
        record = await deliveries.load(redis, delivery_id, keyring=keyring)
        here = record is not None and await deliveries.in_dlq(redis, delivery_id)
        if here and command == "replay":  # in the DLQ still: checked again, atomically
            queued = await deliveries.enqueue_again(redis, delivery_id, settings.retention_s)
            if queued == deliveries.REPLAYING:
                # Not "queued": a run under way goes with the mapping it started with, and if it
                # dies it takes the job out of the queue (see `deliveries.enqueue_again`).
                why = (
                    "is being replayed right now (a run of it is under way, with the mapping it "
                    "started with); if it dies again, replay it again"
                )
                if not everything:
                    print(f"leadbridge: {delivery_id} {why}", file=sys.stderr)
                    return 1
                print(f"{delivery_id}: {why}; skipped")
                continue
            here = queued == deliveries.QUEUED
        if record is None or not here:
            if not everything:
                return _not_in_dlq(delivery_id)
            print(f"{delivery_id}: left the dead-letter queue meanwhile; skipped")
            continue
        if command == "show":
            sys.stdout.write(
                orjson.dumps(record.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n"
            )
        elif command == "replay":
            print(f"{delivery_id}: queued for replay (it leaves the dead-letter queue once delivered)")
        elif command == "purge":
            outcome = await deliveries.purge(redis, delivery_id)
            if outcome != deliveries.PURGED:
                why = (
                    "is being replayed (queued or running); it leaves the dead-letter queue once "
                    "delivered, or can be purged if it dies again"
                    if outcome == deliveries.REPLAYING
                    else "left the dead-letter queue meanwhile"
                )
                if not everything:
                    print(f"leadbridge: {delivery_id} {why}", file=sys.stderr)
                    return 1
                print(f"{delivery_id}: {why}; skipped")
                continue
            print(f"{delivery_id}: purged")
        done += 1
    if everything:
        verb = {"replay": "queued for replay", "purge": "purged"}[command]
        print(f"{done} deliveries {verb}")
    return 0


def _not_in_dlq(delivery_id: str) -> int:
    print(
        f"leadbridge: {delivery_id} is not in the dead-letter queue "
        "(replayed and delivered, purged, expired, or never there); see `leadbridge dlq list`",
        file=sys.stderr,
    )
    return 1


async def _list(redis: Redis, keyring: Keyring) -> int:
    ids = await deliveries.dlq_ids(redis, limit=deliveries.LISTED)
    if not ids:
        print("the dead-letter queue is empty")
        return 0
    total = await deliveries.dlq_size(redis)
    if total > len(ids):
        print(f"the oldest {len(ids)} of {total} dead letters (`dlq replay --all` takes them all):")
    print(f"{'ID':<34} {'MAPPING':<24} {'DIED (UTC)':<20} {'TRIES':>5}  REASON")
    for delivery_id in ids:
        record = await deliveries.load(redis, delivery_id, keyring=keyring)
        if record is None:
            continue
        died = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.dead_at or record.received_at))
        print(f"{record.id:<34} {record.mapping:<24} {died:<20} {record.attempts:>5}  {record.reason or ''}")
    return 0
