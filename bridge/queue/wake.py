"""Waking idle workers when new deliveries are queued.

An idle arq worker polls the queue every `poll_delay` (50 ms), so a webhook that arrives while the
workers are idle waits for the next poll: 25 ms on average, 50 ms at worst, a large part of the
202-to-upstream latency. The accept script publishes on the channel `keys.WAKE` once per stored
batch; each worker process listens on one pub/sub connection and sets an `asyncio.Event` that
cuts its idle wait short (`arq_adapter._idle`). The poll stays the fallback: a message lost while
Redis restarts costs one poll delay, nothing else.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.aio import stop_if_cancelled
from bridge.queue import keys

log = logging.getLogger("bridge.worker")

LISTEN_TIMEOUT_S = 5.0  # how long one read of the channel waits (an idle channel is no error)
RECONNECT_DELAY_S = 1.0


async def wake_on_publish(redis: Redis, wake: asyncio.Event) -> None:
    """Set `wake` on every message on `keys.WAKE`; runs until cancelled, reconnecting as needed."""
    while True:
        try:
            async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(keys.WAKE)
                while True:
                    message = await pubsub.get_message(timeout=LISTEN_TIMEOUT_S)
                    stop_if_cancelled()
                    if message is not None:
                        wake.set()
        except (RedisError, OSError) as exc:
            stop_if_cancelled()
            log.debug("wake-up channel lost (%s); the queue is polled meanwhile", type(exc).__name__)
            await asyncio.sleep(RECONNECT_DELAY_S)
