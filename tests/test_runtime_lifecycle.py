"""Process lifecycle: a SIGTERM that arrives while a container's PID 1 is still starting, two
processes starting the embedded Valkey of one data dir at once, and a drain that meets a job
claimed as it began."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bridge.queue import arq_adapter
from bridge.queue.embedded import EmbeddedValkey
from tests.delivery_support import env, free_port
from tests.servers import until


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (SigCgt of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (sig - 1)))


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (a PID namespace)"
)
def test_a_sigterm_while_pid_1_is_still_starting_stops_it(tmp_path: Path) -> None:
    # In a container (the image has no init) leadbridge is PID 1, and the kernel drops every
    # signal PID 1 has no handler for. Until the event loop installs its handlers, a SIGTERM
    # (a rollout, a scale-down, a pod deleted while it starts) was lost: the pod started anyway,
    # took jobs, and was SIGKILLed terminationGracePeriodSeconds later, mid-job.
    # Start-up is held here by a server.json naming a server (pid 1: leadbridge itself) whose
    # owner is gone: leadbridge waits up to 20 s for that server to exit before starting its own.
    valkey_dir = tmp_path / "data" / "valkey"
    valkey_dir.mkdir(parents=True)
    (valkey_dir / "server.json").write_text('{"pid": 1, "socket": "/nonexistent.sock", "owner_pid": 999999}')
    (tmp_path / "mappings").mkdir()
    environ = env(
        BRIDGE_DATA_DIR=tmp_path / "data",
        BRIDGE_MAPPINGS=tmp_path / "mappings",
        CONNECT_BASE_URL="http://127.0.0.1:9",
        CONNECT_API_KEY="k",
        BRIDGE_WORKER_PROBE_PORT=free_port(),
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        outer = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "bridge", "worker"],
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 5
        while not (children := _children(outer.pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert children, "unshare started no process"
        (pid1,) = children
        while not _catches(pid1, signal.SIGTERM) and time.monotonic() < deadline:
            time.sleep(0.01)  # poll: once its handler is there (or 5 s into the 20 s start-up)
        assert outer.poll() is None
        os.kill(pid1, signal.SIGTERM)
        try:
            code = outer.wait(timeout=10)  # well before the held start-up would end
        except subprocess.TimeoutExpired:
            pytest.fail("the SIGTERM was lost: PID 1 went on starting")
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait()
    assert code == 128 + signal.SIGTERM, log.read_text()[-2000:]


def test_two_processes_starting_on_one_data_dir_at_once_share_one_server(tmp_path: Path) -> None:
    # `serve` and `worker` (or `run` and a `dlq` command) started together on one
    # BRIDGE_DATA_DIR: both found no server.json while the first server was still starting, and
    # both started one, on the same append-only files and socket path. The first server's socket
    # was replaced by the second's: it ran on unreachable, and when the second one's starter
    # stopped, the other process was left with no store at all.
    starters = [EmbeddedValkey(tmp_path / "data") for _ in range(2)]
    together = threading.Barrier(len(starters))
    errors: list[BaseException] = []

    def start(server: EmbeddedValkey) -> None:
        together.wait()
        try:
            server.start()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(server,)) for server in starters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not errors, errors
        assert sorted(server.owned for server in starters) == [False, True]
        assert starters[0].url == starters[1].url
    finally:
        for server in starters:
            server.stop()


async def test_a_job_claimed_as_the_drain_begins_gets_the_grace_period_too(redis_client: Redis) -> None:
    # SIGTERM lands while a busy worker's poll is between its look at `allow_pick_jobs` and its
    # claim (both await Redis): the jobs it claims start after the drain counted the running
    # ones, and were cancelled as soon as those ended (at once, when none ran), not given the
    # grace period: cut mid-call at every rollout under load.
    release = {"drain-a": asyncio.Event(), "drain-b": asyncio.Event()}
    ended: list[str] = []

    async def deliver(ctx: dict[str, object], delivery_id: str) -> str:
        await release[delivery_id].wait()
        ended.append(delivery_id)
        return "delivered"

    worker = arq_adapter.build_worker(
        deliver=deliver,
        redis_pool=arq_adapter.wrap_pool(redis_client),
        on_startup=None,
        ctx={},
        max_jobs=4,
        job_timeout_s=5,
    )
    due = int(time.time() * 1000) - 1000
    await redis_client.zadd(arq_adapter.QUEUE_KEY, {"drain-a": due, "drain-b": due})
    try:
        await worker.start_jobs([b"drain-a"])
        draining = asyncio.create_task(arq_adapter.drain(worker, grace_s=10))
        await until(lambda: not worker.allow_pick_jobs, timeout_s=5)
        await worker.start_jobs([b"drain-b"])  # the poll that was under way claims its job
        release["drain-a"].set()
        # The drain waited on drain-a before this did: it has acted on its end when this wakes.
        await asyncio.wait_for(asyncio.wait([worker.tasks["drain-a"]]), timeout=5)
        release["drain-b"].set()
        await asyncio.wait_for(draining, timeout=15)
        assert ended == ["drain-a", "drain-b"]  # drain-b finished within the grace, not cut
        assert await redis_client.zscore(arq_adapter.QUEUE_KEY, "drain-b") is None
    finally:
        for event in release.values():
            event.set()
        await redis_client.zrem(arq_adapter.QUEUE_KEY, "drain-a", "drain-b")
