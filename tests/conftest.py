"""Shared fixtures: a real embedded Valkey server for the whole session, flushed per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bridge.queue.embedded import EmbeddedValkey


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey-data")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(valkey_server: EmbeddedValkey) -> str:
    """The URL of a real, empty Valkey server (flushed before each test)."""
    import redis

    client = redis.Redis.from_url(valkey_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return valkey_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
async def pipe(redis_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """The whole pipeline (sandbox + web + worker) with the `contact` standard-webhooks mapping."""
    from tests.pipeline import pipeline

    async with pipeline(redis_url, tmp_path / "mappings") as running:
        yield running
