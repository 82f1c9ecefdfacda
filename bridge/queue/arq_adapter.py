"""The only module that imports arq: job records, the worker, retries.

arq is maintenance-only, so everything arq-specific stays here. We write arq's job records
ourselves in the ingest batch (one round trip for many deliveries instead of arq's several per
enqueue), in exactly the format `arq.jobs.serialize_job` produces, with a JSON serializer
instead of pickle (nothing read back from Redis can run code).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from arq import Retry
from arq.connections import RedisSettings
from arq.constants import default_queue_name, job_key_prefix
from arq.jobs import serialize_job
from arq.worker import Worker, func

QUEUE_KEY = default_queue_name
DELIVER_FUNCTION = "deliver"

__all__ = ["QUEUE_KEY", "Retry", "build_worker", "job_key", "job_record", "redis_settings"]


def serialize(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def deserialize(raw: bytes) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(raw)
    return value


def job_key(delivery_id: str) -> str:
    return job_key_prefix + delivery_id


def job_record(delivery_id: str, enqueue_time_ms: int) -> bytes:
    """The arq job for one delivery: function `deliver`, one argument, the delivery id."""
    return serialize_job(DELIVER_FUNCTION, (delivery_id,), {}, None, enqueue_time_ms, serializer=serialize)


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url.replace("valkey://", "redis://").replace("valkeys://", "rediss://"))
    settings.conn_retries = 0
    return settings


def build_worker(
    *,
    deliver: Callable[..., Awaitable[Any]],
    redis_pool: Any,
    on_startup: Callable[[dict[str, Any]], Awaitable[None]] | None,
    ctx: dict[str, Any],
    max_jobs: int,
    job_timeout_s: float,
    poll_delay_s: float = 0.05,
) -> Worker:
    """An arq worker running `deliver(ctx, delivery_id)` with our serializer and no result keys.

    Retries are ours (the job raises `Retry(defer=...)`) and bounded by our own window, so arq's
    max_tries is set high enough never to be the one that gives up.
    """
    return Worker(
        functions=[func(cast(Any, deliver), name=DELIVER_FUNCTION, max_tries=1_000_000)],
        redis_pool=redis_pool,
        on_startup=cast(Any, on_startup),
        ctx=ctx,
        max_jobs=max_jobs,
        job_timeout=job_timeout_s,
        keep_result=0,
        keep_result_forever=False,
        poll_delay=poll_delay_s,
        queue_read_limit=max(max_jobs * 2, 100),
        handle_signals=False,
        job_serializer=serialize,
        job_deserializer=deserialize,
        max_burst_jobs=-1,
        health_check_interval=3600,
    )


def wrap_pool(redis: Any) -> Any:
    """An ArqRedis sharing the given client's connection pool (one pool per process)."""
    from arq.connections import ArqRedis

    return ArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE_KEY,
    )


async def drain(worker: Worker, grace_s: float) -> None:
    """Stop picking jobs, give running ones `grace_s` to finish, then cancel the rest.

    A cancelled job stays in the queue (arq treats cancellation as "run again"), and its
    commands are idempotent, so cutting it short loses nothing.
    """
    import asyncio

    worker.allow_pick_jobs = False
    running = [t for t in worker.tasks.values() if not t.done()]
    if running:
        await asyncio.wait(running, timeout=grace_s)
    for task in worker.tasks.values():
        if not task.done():
            task.cancel()
    remaining = [t for t in worker.tasks.values() if not t.done()]
    if remaining:
        await asyncio.wait(remaining, timeout=5)
    if worker.main_task is not None:
        worker.main_task.cancel()
