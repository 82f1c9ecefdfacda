"""What in the store's own configuration can lose webhooks that were answered 202.

A 202 means stored, and that holds only if the store keeps what it acknowledged
(docs/delivery.md, "What an external Redis needs"). The embedded Valkey is configured so; an
external one may not be. `store_risks` reads the three settings that matter and names each one
that can lose or double leads; the processes log them at start (`log_store_risks`), once, as
errors. A store that does not let us read its configuration (managed services often disable
CONFIG) is logged as unchecked, not as a risk. Nothing here stops a process: a deliberate setup
(replicas and `BRIDGE_REDIS_WAIT_REPLICAS`) is the operator's call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from redis import exceptions as store_errors
from redis.asyncio import Redis

from bridge.aio import stop_if_cancelled

log = logging.getLogger("bridge.store")

DOCS = "docs/delivery.md#what-an-external-redis-needs"
SETTINGS = ("maxmemory-policy", "appendonly", "appendfsync")


def risks_of(config: dict[str, str], wait_replicas: int) -> list[str]:
    """One line for each setting in `config` (as CONFIG GET answers) that can lose webhooks."""
    found = []
    policy = config.get("maxmemory-policy")
    if policy is not None and policy != "noeviction":
        found.append(
            f"maxmemory-policy is {policy}: when the store's memory is full it deletes keys, queued "
            "deliveries and dedupe records among them (leads lost, or a provider's retry accepted "
            "again); set it to noeviction"
        )
    if config.get("appendonly") == "no":
        found.append(
            "appendonly is no: a restart of the store loses every webhook accepted since its last "
            "snapshot; set appendonly yes"
        )
    elif config.get("appendfsync") in ("everysec", "no") and wait_replicas == 0:
        found.append(
            f"appendfsync is {config['appendfsync']} and BRIDGE_REDIS_WAIT_REPLICAS is 0: a crash of the "
            "store can lose the webhooks of its last second or more; set appendfsync always, or "
            "give it replicas and set BRIDGE_REDIS_WAIT_REPLICAS"
        )
    return found


async def store_risks(redis: Redis, wait_replicas: int) -> list[str] | None:
    """The store's risks (`risks_of`); None when it refuses to show its configuration.
    Raises the client's ConnectionError or TimeoutError when it cannot be reached."""
    try:
        # config_get(*SETTINGS), whose stub types its extra patterns as lists
        raw = await cast(Any, redis).config_get(*SETTINGS)
    except store_errors.ResponseError:  # CONFIG disabled or not permitted
        return None
    config = {_text(k): _text(v) for k, v in raw.items()}
    return risks_of(config, wait_replicas)


async def log_store_risks(redis: Redis, wait_replicas: int, retry_s: float = 5.0) -> None:
    """Log the store's risks once it can be reached (a background task of each process)."""
    while True:
        try:
            risks = await store_risks(redis, wait_replicas)
            break
        except (store_errors.ConnectionError, store_errors.TimeoutError, OSError):
            stop_if_cancelled()
            await asyncio.sleep(retry_s)  # not up yet: the web answers 503 meanwhile
    if risks is None:
        log.warning("could not read the store's configuration (CONFIG GET); check it yourself: %s", DOCS)
        return
    for risk in risks:
        log.error("the store can lose accepted webhooks: %s (%s)", risk, DOCS)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
