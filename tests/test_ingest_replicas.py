"""The batched accept with `BRIDGE_REDIS_WAIT_REPLICAS`: a real primary and a real replica
(the embedded Valkey binary, over loopback TCP), the replica frozen with SIGSTOP when a test needs
it to lag (connected, acknowledging nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.errors import QueueUnavailable
from bridge.queue import keys
from bridge.queue.embedded import _binary_path
from bridge.queue.ingest import Accepter, Incoming
from tests.delivery_support import free_port
from tests.servers import until


def _valkey(folder: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True)
    args = [str(_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", *extra]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    primary_port, replica_port = free_port(), free_port()
    primary = _valkey(tmp_path / "primary", primary_port)
    replica = _valkey(tmp_path / "replica", replica_port, "--replicaof", "127.0.0.1", str(primary_port))
    try:
        yield f"redis://127.0.0.1:{primary_port}", replica
    finally:
        for process in (replica, primary):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            process.wait()


@pytest.fixture
async def admin(primary_and_replica: tuple[str, subprocess.Popen[bytes]]) -> AsyncIterator[Redis]:
    client = Redis.from_url(primary_and_replica[0])

    async def replica_online() -> bool:
        try:
            info = await client.info("replication")
        except RedisConnectionError:
            return False  # the primary is still starting
        return int(info.get("connected_slaves", 0)) == 1 and info["slave0"]["state"] == "online"

    await until(replica_online, timeout_s=20)
    yield client
    await client.aclose()


def _incoming(event_id: str) -> Incoming:
    return Incoming(mapping="m", provider="none", event_id=event_id, body=b'{"a":1}', headers={})


async def test_stored_is_answered_once_the_replica_has_it(
    primary_and_replica: tuple[str, subprocess.Popen[bytes]], admin: Redis
) -> None:
    client = Redis.from_url(primary_and_replica[0])
    try:
        accepter = Accepter(
            client, dedupe_window_s=60, retention_s=120, wait_replicas=1, wait_timeout_ms=5000
        )
        accepted = await accepter.accept(_incoming("e1"))
        assert not accepted.duplicate
        info = await admin.info("replication")
        assert (
            int(info["slave0"]["offset"]) >= int(info["master_repl_offset"]) - 100
        )  # caught up (a ping at most)
    finally:
        await client.aclose()


async def test_a_retry_on_another_web_pod_is_no_duplicate_until_the_replica_has_the_first_copy(
    primary_and_replica: tuple[str, subprocess.Popen[bytes]], admin: Redis
) -> None:
    """Two web pods (two Accepters, each its own connection). Pod A stores a webhook on the
    primary, but the replica does not acknowledge it: 503, and the provider retries, here on pod
    B. B's batch is all duplicates; had it written nothing, its WAIT would have covered only B's
    own earlier writes and passed at once: "200 duplicate" for a delivery that a failover then
    loses. The accept script writes in every batch, so B's WAIT covers the first copy too."""
    url, replica = primary_and_replica
    pod_a, pod_b = Redis.from_url(url), Redis.from_url(url)
    a = Accepter(pod_a, dedupe_window_s=60, retention_s=120, wait_replicas=1, wait_timeout_ms=2000)
    b = Accepter(pod_b, dedupe_window_s=60, retention_s=120, wait_replicas=1, wait_timeout_ms=2000)
    try:
        assert not (await b.accept(_incoming("warm-up"))).duplicate  # B's connection has written
        os.kill(replica.pid, signal.SIGSTOP)
        with pytest.raises(QueueUnavailable):
            await a.accept(_incoming("lead-1"))
        assert await admin.get(keys.seen("m", "lead-1"))  # stored on the primary
        info = await admin.info("replication")
        assert int(info["slave0"]["offset"]) < int(info["master_repl_offset"])  # and only there
        with pytest.raises(QueueUnavailable):
            await b.accept(_incoming("lead-1"))
        os.kill(replica.pid, signal.SIGCONT)  # the replica catches up: now it is a duplicate
        assert (await b.accept(_incoming("lead-1"))).duplicate
    finally:
        os.kill(replica.pid, signal.SIGCONT)
        for client in (pod_a, pod_b):
            await client.aclose()
