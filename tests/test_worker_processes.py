"""leadbridge as real processes: SIGTERM drains within the grace period, and a kill -9 of the whole
process group (embedded Valkey included) loses no webhook that was answered 202."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bridge.queue import arq_adapter
from bridge.queue.embedded import EmbeddedValkey
from bridge.sandbox import DEMO_API_KEY, create_sandbox_app
from tests.delivery_support import Service, env, free_port, sample, wait_ready
from tests.pipeline import CONTACT_MAPPING, SECRET, sign
from tests.servers import serve, until


@dataclass
class Setup:
    sandbox: Any  # SandboxState of the upstream, served by this test
    sandbox_url: str
    http: httpx.AsyncClient
    tmp: Path

    def service(self, name: str, mapping: str = CONTACT_MAPPING, **settings: str | float) -> Service:
        mappings = self.tmp / "mappings"
        mappings.mkdir(exist_ok=True)
        (mappings / "contact.yaml").write_text(mapping)
        environ = env(
            CONNECT_BASE_URL=self.sandbox_url,
            CONNECT_API_KEY=DEMO_API_KEY,
            CONTACT_SECRET=SECRET,
            BRIDGE_MAPPINGS=mappings,
            BRIDGE_DATA_DIR=self.tmp / "data",
            BRIDGE_HOST="127.0.0.1",
            BRIDGE_RETRY_BASE_S=0.05,
            BRIDGE_RETRY_MAX_DELAY_S=0.3,
            BRIDGE_JOB_LEASE_S=2,
            BRIDGE_LOG_LEVEL="warning",
            **settings,
        )
        return Service(["run"], environ, self.tmp / f"{name}.log")

    def set_faults(self, **faults: Any) -> None:
        from bridge.sandbox import FaultConfig

        self.sandbox.faults = FaultConfig(**faults)

    def entries_by_email(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.sandbox.entries.values():
            email = entry["data"]["email"]
            counts[email] = counts.get(email, 0) + 1
        return counts


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    app = create_sandbox_app(DEMO_API_KEY)
    async with AsyncExitStack() as stack:
        sandbox_url = await stack.enter_async_context(serve(app))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        yield Setup(app.state.sandbox, sandbox_url, http, tmp_path)


async def send(http: httpx.AsyncClient, base: str, email: str, first_name: str = "K") -> httpx.Response:
    raw = orjson.dumps({"data": {"email": email, "first_name": first_name}})
    return await http.post(f"{base}/hooks/contact", content=raw, headers=sign(raw))


async def metrics(http: httpx.AsyncClient, base: str) -> str:
    return (await http.get(f"{base}/metrics")).text


async def sigterm_mid_job(
    setup: Setup, name: str, port: int, *, grace_s: float, latency_ms: int, email: str
) -> tuple[Service, int, float]:
    """Start `run` on `port`, send one webhook to an upstream slowed by `latency_ms`, SIGTERM the
    process while the job is in flight; (the stopped service, its exit code, seconds it took)."""
    base = f"http://127.0.0.1:{port}"
    service = setup.service(name, BRIDGE_PORT=port, BRIDGE_SHUTDOWN_GRACE_S=grace_s).start()
    try:
        await wait_ready(setup.http, f"{base}/readyz", service)
        setup.set_faults(latency_ms=latency_ms)
        assert (await send(setup.http, base, email)).status_code == 202

        async def in_flight() -> bool:
            return sample(await metrics(setup.http, base), "leadbridge_worker_jobs_in_flight") == 1

        await until(in_flight, timeout_s=10)
        started = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code = await asyncio.to_thread(service.wait, 15)
        took = time.monotonic() - started
    finally:
        service.stop()
    return service, code, took


def inspect_queue(data_dir: Path) -> tuple[int, dict[str, str]]:
    """(queue depth, status by delivery id), read from the service's stopped embedded store."""
    import redis

    with EmbeddedValkey(data_dir) as server:
        client = redis.Redis.from_url(server.url)
        try:
            depth = int(client.zcard(arq_adapter.QUEUE_KEY))
            statuses = {}
            for key in client.scan_iter("lb:d:*"):
                status = client.hget(key, "status")
                statuses[key.decode()[5:]] = status.decode() if status else "?"
        finally:
            client.close()
    return depth, statuses


async def test_sigterm_lets_the_running_job_finish_within_the_grace_period(setup: Setup) -> None:
    # a slow upstream: the job is mid-call at SIGTERM
    service, code, took = await sigterm_mid_job(
        setup, "run", free_port(), grace_s=6, latency_ms=1500, email="slow@example.com"
    )
    assert code == 0, service.log_text()[-2000:]
    assert took < 6, f"shutdown took {took:.1f} s"
    assert setup.entries_by_email() == {"slow@example.com": 1}  # finished, not cut short
    depth, statuses = inspect_queue(setup.tmp / "data")
    assert depth == 0
    assert list(statuses.values()) == ["delivered"]


async def test_sigterm_past_the_grace_period_leaves_the_job_to_run_again(setup: Setup) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    service, code, took = await sigterm_mid_job(
        setup, "first", port, grace_s=1, latency_ms=4000, email="cut@example.com"
    )
    assert code == 0, service.log_text()[-2000:]
    assert took < 4, f"shutdown took {took:.1f} s"
    depth, statuses = inspect_queue(setup.tmp / "data")
    assert depth == 1  # still queued: nothing lost
    assert list(statuses.values()) != ["delivered"]

    setup.set_faults()
    again = setup.service("second", BRIDGE_PORT=port, BRIDGE_SHUTDOWN_GRACE_S=1).start()
    try:
        await wait_ready(setup.http, f"{base}/readyz", again)

        async def delivered() -> bool:
            # The cut-short call may still land at the upstream: same idempotency key, one entry.
            return (
                setup.entries_by_email() == {"cut@example.com": 1}
                and sample(await metrics(setup.http, base), "leadbridge_queue_depth") == 0
            )

        await until(delivered, timeout_s=20)
    finally:
        again.stop()
    await until(lambda: setup.entries_by_email() == {"cut@example.com": 1}, timeout_s=6)


async def test_kill_9_of_everything_loses_no_accepted_webhook(setup: Setup) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    setup.set_faults(latency_ms=40)  # the queue builds up: plenty is in flight at the kill
    service = setup.service("first", BRIDGE_PORT=port, BRIDGE_WORKER_CONCURRENCY=8).start()
    await wait_ready(setup.http, f"{base}/readyz", service)
    accepted: set[str] = set()
    answered = asyncio.Event()
    gate = asyncio.Semaphore(24)

    async def one(n: int) -> None:
        email = f"k{n}@example.com"
        async with gate:
            try:
                response = await send(setup.http, base, email)
            except httpx.HTTPError:
                return  # no answer: the provider would retry; not ours to count
        if response.status_code == 202:
            accepted.add(email)
            if len(accepted) >= 60:
                answered.set()

    senders = [asyncio.create_task(one(n)) for n in range(200)]
    await asyncio.wait_for(answered.wait(), timeout=30)
    state = json.loads((setup.tmp / "data" / "valkey" / "server.json").read_text())
    service.kill_group(signal.SIGKILL)  # leadbridge ...
    os.kill(int(state["pid"]), signal.SIGKILL)  # ... and the Valkey server, at once
    await asyncio.gather(*senders)
    service.wait(10)
    assert len(accepted) >= 60
    delivered_before = len(setup.entries_by_email())
    assert delivered_before < len(accepted), "the kill came too late to prove anything"

    again = setup.service("second", BRIDGE_PORT=port).start()  # not blocked by the stale server
    try:
        await wait_ready(setup.http, f"{base}/readyz", again, timeout_s=30)

        def all_delivered() -> bool:
            return accepted <= set(setup.entries_by_email())

        await until(all_delivered, timeout_s=60, interval_s=0.1)

        async def drained() -> bool:
            return sample(await metrics(setup.http, base), "leadbridge_queue_depth") == 0

        await until(drained, timeout_s=30)
    finally:
        again.stop()
    counts = setup.entries_by_email()
    assert max(counts.values()) == 1  # nothing created twice
    assert accepted <= set(counts)
    added = [e for e in setup.sandbox.events if e["type"] == "table.entry.added"]
    assert len(added) == len(counts)


async def kill_9_once_applied(
    setup: Setup,
    port: int,
    applied: Callable[[], bool],
    *events: tuple[str, str],
    mapping: str = CONTACT_MAPPING,
) -> Service:
    """Start `run` on `port` and send `events` ((e-mail, first name)): each but the last
    delivered before the next is sent, the last with the upstream's answers held back. Once it
    is `applied` upstream, kill -9 leadbridge and its Valkey at once, before any attempt is
    recorded. Returns the next service, not started, its `mapping` changed: one more field."""
    base = f"http://127.0.0.1:{port}"
    service = setup.service("first", mapping, BRIDGE_PORT=port).start()
    try:
        await wait_ready(setup.http, f"{base}/readyz", service)
        *before, last = events
        for email, first_name in before:
            assert (await send(setup.http, base, email, first_name)).status_code == 202

            async def drained() -> bool:
                return sample(await metrics(setup.http, base), "leadbridge_queue_depth") == 0

            await until(drained, timeout_s=10)
        setup.set_faults(lost_response_rate=1.0, timeout_s=60)
        assert (await send(setup.http, base, *last)).status_code == 202
        await until(applied, timeout_s=10)
        state = json.loads((setup.tmp / "data" / "valkey" / "server.json").read_text())
        service.kill_group(signal.SIGKILL)
        os.kill(int(state["pid"]), signal.SIGKILL)
        service.wait(10)
    finally:
        service.stop()
    setup.set_faults()
    again = setup.service("second", mapping, BRIDGE_PORT=port)  # writes it: change it after this
    (setup.tmp / "mappings" / "contact.yaml").write_text(mapping + "    last_name: data.first_name\n")
    return again


async def rerun(setup: Setup, again: Service, port: int) -> tuple[int, dict[str, str]]:
    """Start `again` on `port`, wait until its queue is empty or something is dead-lettered,
    check that nothing is, stop it; (queue depth, status by delivery id) from its store."""
    base = f"http://127.0.0.1:{port}"
    again.start()
    try:
        await wait_ready(setup.http, f"{base}/readyz", again, timeout_s=30)

        async def done() -> bool:
            page = await metrics(setup.http, base)
            return sample(page, "leadbridge_queue_depth") == 0 or sample(page, "leadbridge_dlq_size") != 0

        await until(done, timeout_s=20)
        assert sample(await metrics(setup.http, base), "leadbridge_dlq_size") == 0
    finally:
        again.stop()
    return inspect_queue(setup.tmp / "data")


async def test_a_create_cut_by_kill_9_is_sent_again_with_its_first_body_though_the_mapping_changed(
    setup: Setup,
) -> None:
    # The create reached the upstream (applied, its answer held back), then everything was killed
    # before any attempt was recorded; the mapping changed before the restart. The rerun must send
    # the body first sent under the create's idempotency key: with a body built anew the upstream
    # answers 422, the delivery dies unlinked, and the record's next event creates a second lead.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    again = await kill_9_once_applied(
        setup, port, lambda: setup.entries_by_email() == {"cut@example.com": 1}, ("cut@example.com", "K")
    )
    again.start()
    try:
        await wait_ready(setup.http, f"{base}/readyz", again, timeout_s=30)
        # The record's next event: after the first delivery's turn, a patch of its entry (or,
        # had that delivery died unlinked, a second entry).
        assert (await send(setup.http, base, "cut@example.com")).status_code == 202

        def settled() -> bool:
            entries = list(setup.sandbox.entries.values())
            return len(entries) > 1 or any("last_name" in e["data"] for e in entries)

        await until(settled, timeout_s=20)
        assert sample(await metrics(setup.http, base), "leadbridge_dlq_size") == 0
    finally:
        again.stop()
    assert setup.entries_by_email() == {"cut@example.com": 1}
    entry = next(iter(setup.sandbox.entries.values()))
    assert entry["data"] == {"email": "cut@example.com", "first_name": "K", "last_name": "K"}
    added = [e for e in setup.sandbox.events if e["type"] == "table.entry.added"]
    assert len(added) == 1


async def test_a_patch_cut_by_kill_9_is_sent_again_with_its_first_body_though_the_mapping_changed(
    setup: Setup,
) -> None:
    # The record's second event patched its entry upstream (its answer held back), then everything
    # was killed before any attempt was recorded; the mapping changed before the restart. The
    # rerun must send the patch first sent under its key: a body built anew gets 422 and the
    # update is dead-lettered, and a replay, building it anew again, is refused the same way.
    port = free_port()

    def patched() -> bool:
        return [e["data"]["first_name"] for e in setup.sandbox.entries.values()] == ["L"]

    again = await kill_9_once_applied(
        setup, port, patched, ("upd@example.com", "K"), ("upd@example.com", "L")
    )
    depth, statuses = await rerun(setup, again, port)
    assert (depth, sorted(statuses.values())) == (0, ["delivered", "delivered"])
    entry = next(iter(setup.sandbox.entries.values()))
    assert entry["data"] == {"email": "upd@example.com", "first_name": "L"}  # the body first sent
    assert [e["type"] for e in setup.sandbox.events].count("table.entry.added") == 1


async def test_an_unkeyed_create_cut_by_kill_9_is_sent_again_with_its_first_body_though_the_mapping_changed(
    setup: Setup,
) -> None:
    # A mapping without a key: its create has no turn, so it is pinned in a round trip of its own
    # before it goes. Applied upstream (its answer held back), everything killed, the mapping
    # changed: the rerun sends the body first sent (the upstream replays its answer); a body
    # built anew would get 422 and be dead-lettered, and a replay refused the same way.
    port = free_port()
    unkeyed = CONTACT_MAPPING.replace("action: upsert\nkey: data.email\n", "action: create\n")
    assert unkeyed != CONTACT_MAPPING
    again = await kill_9_once_applied(
        setup,
        port,
        lambda: setup.entries_by_email() == {"new@example.com": 1},
        ("new@example.com", "K"),
        mapping=unkeyed,
    )
    depth, statuses = await rerun(setup, again, port)
    assert (depth, list(statuses.values())) == (0, ["delivered"])
    assert setup.entries_by_email() == {"new@example.com": 1}
    entry = next(iter(setup.sandbox.entries.values()))
    assert entry["data"] == {"email": "new@example.com", "first_name": "K"}  # the body first sent
    assert [e["type"] for e in setup.sandbox.events].count("table.entry.added") == 1
