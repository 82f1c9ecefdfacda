"""The store's configuration checked at start: what can lose webhooks that were answered 202 is
logged as an error (a real Valkey of the test's own, reconfigured)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bridge.queue.durability import log_store_risks, risks_of
from bridge.queue.embedded import EmbeddedValkey

SAFE = {"maxmemory-policy": "noeviction", "appendonly": "yes", "appendfsync": "always"}


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[Redis]:
    server = EmbeddedValkey(tmp_path / "valkey").start()
    client = Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()
        server.stop()


def test_the_embedded_settings_risk_nothing() -> None:
    assert risks_of(SAFE, wait_replicas=0) == []


@pytest.mark.parametrize(
    ("changed", "wait_replicas", "named"),
    [
        ({"maxmemory-policy": "allkeys-lru"}, 0, ["maxmemory-policy is allkeys-lru"]),
        ({"maxmemory-policy": "volatile-ttl"}, 1, ["maxmemory-policy is volatile-ttl"]),
        ({"appendonly": "no"}, 0, ["appendonly is no"]),
        ({"appendonly": "no", "appendfsync": "everysec"}, 0, ["appendonly is no"]),
        ({"appendfsync": "everysec"}, 0, ["appendfsync is everysec"]),
        ({"appendfsync": "no"}, 0, ["appendfsync is no"]),
        ({"appendfsync": "everysec"}, 1, []),  # replicas acknowledge before the 202
    ],
)
def test_each_risky_setting_is_named(changed: dict[str, str], wait_replicas: int, named: list[str]) -> None:
    risks = risks_of({**SAFE, **changed}, wait_replicas)
    assert len(risks) == len(named)
    assert all(risk.startswith(start) for risk, start in zip(risks, named, strict=True)), risks


async def test_a_store_that_evicts_is_logged_as_an_error_at_start(
    own_store: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await own_store.config_set("maxmemory-policy", "allkeys-lru")
    with caplog.at_level(logging.INFO, logger="bridge.store"):
        await log_store_risks(own_store, wait_replicas=0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "maxmemory-policy is allkeys-lru" in errors[0]
    assert "docs/delivery.md#what-an-external-redis-needs" in errors[0]


async def test_a_store_that_hides_its_configuration_is_logged_as_unchecked(
    own_store: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await own_store.acl_setuser(
        "bridge", enabled=True, passwords=["+secret"], keys=["~*"], commands=["+@all", "-config"]
    )
    limited = Redis.from_url(_url_of(own_store), username="bridge", password="secret")
    try:
        assert await limited.ping()
        with caplog.at_level(logging.INFO, logger="bridge.store"):
            await log_store_risks(limited, wait_replicas=0)
    finally:
        await limited.aclose()
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(records) == 1
    assert records[0][0] == logging.WARNING
    assert "could not read the store's configuration" in records[0][1]


async def test_an_unreachable_store_is_checked_when_it_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedValkey(tmp_path / "valkey").start()
    server.stop()
    client = Redis.from_url(server.url)
    try:
        with caplog.at_level(logging.INFO, logger="bridge.store"):
            check = asyncio.create_task(log_store_risks(client, wait_replicas=0, retry_s=0.05))
            done, _ = await asyncio.wait({check}, timeout=0.3)
            assert not done  # still waiting for the store, and nothing said about it
            assert caplog.records == []
            server.start()
            await asyncio.wait_for(check, timeout=10)  # read: the embedded settings risk nothing
    finally:
        await client.aclose()
        server.stop()
    assert caplog.records == []  # not "could not read the store's configuration"


def _url_of(client: Redis) -> str:
    return f"unix://{client.get_connection_kwargs()['path']}"
