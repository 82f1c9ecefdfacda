"""Commands packed by hiredis are the bytes redis-py's own packer makes, and work on a real server."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from bridge.queue.resp import packed_by_hiredis
from bridge.runtime import make_redis

ARGS = [
    ("SET", "k", "välue"),
    ("EVALSHA", "a" * 40, 2, "q", b"s", 600, 1.5, b"\x00\xff" * 4000),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "x"),
]


@pytest.mark.parametrize("args", ARGS)
def test_same_bytes_as_redis_py(args: tuple[object, ...]) -> None:
    ours = b"".join(packed_by_hiredis(Connection)().pack_command(*args))
    theirs = b"".join(Connection().pack_command(*args))
    assert ours == theirs


def test_one_class_per_connection_class_and_unencodable_values_refused() -> None:
    assert packed_by_hiredis(Connection) is packed_by_hiredis(Connection)
    assert issubclass(packed_by_hiredis(UnixDomainSocketConnection), UnixDomainSocketConnection)
    with pytest.raises(DataError):
        packed_by_hiredis(Connection)().pack_command("SET", "k", object())


async def test_the_process_client_packs_with_hiredis(redis_url: str) -> None:
    client = make_redis(redis_url)
    try:
        assert client.connection_pool.connection_class.__name__.startswith("Hiredis")
        await client.set("resp-test", b"\x00" * 10_000)
        assert await client.get("resp-test") == b"\x00" * 10_000
    finally:
        await client.aclose()
