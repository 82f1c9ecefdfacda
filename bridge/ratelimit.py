"""Optional per-mapping limit on accepted deliveries, shared across replicas through Redis.

A mapping with `rate_limit: {per_s: N}` (when the mapping engine exposes `rate_limit_per_s`)
accepts at most N deliveries per second window; the rest get 429 with Retry-After. Mappings
without a limit cost nothing here.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.errors import QueueUnavailable, RateLimited
from bridge.queue import keys


class RateLimiter:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def check(self, name: str, mapping: Any) -> None:
        limit = getattr(mapping, "rate_limit_per_s", None)
        if not limit:
            return
        window = int(time.time())
        key = f"{keys.RATE}{name}:{window}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, 2)
                count, _ = await pipe.execute()
        except (RedisError, OSError):
            raise QueueUnavailable() from None
        if int(count) > int(limit):
            raise RateLimited(retry_after_s=1)
