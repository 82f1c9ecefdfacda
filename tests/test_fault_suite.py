"""The fault-injection suite (acceptance of the delivery-guarantees issue).

Real processes: an embedded Valkey with persistence (owned by this test), the Connect sandbox
(`leadbridge sandbox`) failing 20 % of writes with 500, 5 % with 429 + Retry-After, timing out
5 % and losing the answer of another 5 % after committing the write, the web (`leadbridge
serve`) and two workers (`leadbridge worker`). This test plays the providers: 2,000 signed
webhooks, each retried on anything but a 2xx, and 10 % of them sent again after their 2xx. While
they flow, workers are killed with SIGKILL and restarted four times, and Valkey is killed and
restarted once.

At the end every webhook that got a 2xx is exactly one entry with exactly one
`table.entry.added`, the queue and the DLQ are empty, and the counters agree.

Scaled up, the same test runs the pipeline at full speed (the performance issue asks for it
once, under load): FAULT_SUITE_WEBHOOKS, FAULT_SUITE_SENDERS (concurrent providers) and
FAULT_SUITE_WORKER_CONCURRENCY (each worker's deliveries in flight) override 2,000 / 32 / 32;
the kills come at the same fractions of the webhooks, and the deadlines grow with their number.
docs/delivery.md has the command and the figures of such a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from bridge.queue import arq_adapter, keys
from bridge.queue.embedded import EmbeddedValkey
from bridge.sandbox import DEMO_API_KEY
from tests.delivery_support import Service, env, free_port, sample, wait_ready
from tests.pipeline import CONTACT_MAPPING, SECRET, sign
from tests.servers import until

WEBHOOKS = int(os.environ.get("FAULT_SUITE_WEBHOOKS", "2000"))
RESEND_SHARE = 0.10
SENDERS = int(os.environ.get("FAULT_SUITE_SENDERS", "32"))
DEADLINE_S = 120 * max(1.0, WEBHOOKS / 2000)  # for each kill, and for the queue to settle
FAULTS = {
    "error_rate": 0.20,
    "rate_limit_rate": 0.05,
    "retry_after_s": 1,
    "timeout_rate": 0.05,
    "lost_response_rate": 0.05,
    "timeout_s": 0.5,  # just above the workers' BRIDGE_UPSTREAM_TIMEOUT_S
    "seed": 20240501,
}
WORKER_SETTINGS = {
    "BRIDGE_UPSTREAM_TIMEOUT_S": 0.3,
    "BRIDGE_RETRY_BASE_S": 0.05,
    "BRIDGE_RETRY_MAX_DELAY_S": 0.5,
    "BRIDGE_JOB_TIMEOUT_S": 10,
    "BRIDGE_JOB_LEASE_S": 2,
    "BRIDGE_WORKER_CONCURRENCY": int(os.environ.get("FAULT_SUITE_WORKER_CONCURRENCY", "32")),
    "BRIDGE_CIRCUIT_MIN_CALLS": 50,
    "BRIDGE_WORKER_PROBE_PORT": 0,
}


@dataclass
class Provider:
    """The senders' side: what each webhook got back."""

    http: httpx.AsyncClient
    url: str
    first_status: dict[str, int] = field(default_factory=dict)  # email -> status of its first 2xx
    delivery_ids: dict[str, str] = field(default_factory=dict)
    answers: Counter[int] = field(default_factory=Counter)  # every answer, by status
    refused: int = 0  # no answer at all (connection refused or reset)

    async def deliver(self, email: str, msg_id: str) -> tuple[int, str]:
        raw = orjson.dumps({"type": "contact.submitted", "data": {"email": email, "first_name": "F"}})
        return await self.send(raw, msg_id)

    async def send(self, raw: bytes, msg_id: str) -> tuple[int, str]:
        """Send until a 2xx, as a provider's retry schedule would (fast here): its status and
        delivery id."""
        while True:
            try:
                response = await self.http.post(self.url, content=raw, headers=sign(raw, msg_id))
            except httpx.HTTPError:
                self.refused += 1
            else:
                self.answers[response.status_code] += 1
                if response.status_code in (200, 202):
                    return response.status_code, str(response.json()["delivery_id"])
            await asyncio.sleep(random.uniform(0.05, 0.2))


@dataclass
class Cluster:
    tmp: Path
    valkey: EmbeddedValkey
    redis: Redis
    http: httpx.AsyncClient
    sandbox: Service
    sandbox_url: str
    web: Service
    web_url: str
    workers: list[Service]
    kills: list[str] = field(default_factory=list)

    async def kill_worker(self, index: int) -> None:
        depth = await self.redis.zcard(arq_adapter.QUEUE_KEY)
        worker = self.workers[index]
        worker.kill_group(signal.SIGKILL)
        await asyncio.to_thread(worker.wait, 10)
        worker.start()
        self.kills.append(f"worker {index} (queue {depth})")

    async def restart_valkey(self) -> None:
        depth = await self.redis.zcard(arq_adapter.QUEUE_KEY)
        self.valkey.kill()
        await asyncio.to_thread(self.valkey.start)
        self.kills.append(f"valkey (queue {depth})")


@asynccontextmanager
async def running_cluster(
    tmp_path: Path,
    mapping_files: dict[str, str],
    *,
    senders: int = SENDERS,
    worker_log_level: str = "warning",
) -> AsyncIterator[Cluster]:
    """Valkey, the sandbox, the web and two workers, as processes, with `mapping_files` (name ->
    text) in their mapping folder, `tmp_path / "mappings"`. `senders`: the concurrent requests
    the test's client is sized for."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for name, text in mapping_files.items():
        (mappings / name).write_text(text)
    valkey = EmbeddedValkey(tmp_path / "valkey").start()
    sandbox_port, web_port = free_port(), free_port()
    sandbox_url, web_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{web_port}"
    common = {"REDIS_URL": valkey.url, "BRIDGE_HOST": "127.0.0.1", "BRIDGE_LOG_LEVEL": "warning"}
    sandbox = Service(["sandbox", "--port", str(sandbox_port)], env(**common), tmp_path / "sandbox.log")
    web_env = env(**common, BRIDGE_PORT=web_port, BRIDGE_MAPPINGS=mappings, CONTACT_SECRET=SECRET)
    web = Service(["serve"], web_env, tmp_path / "web.log")
    worker_env = env(
        **{**common, "BRIDGE_LOG_LEVEL": worker_log_level},
        **WORKER_SETTINGS,
        BRIDGE_MAPPINGS=mappings,
        CONTACT_SECRET=SECRET,
        CONNECT_BASE_URL=sandbox_url,
        CONNECT_API_KEY=DEMO_API_KEY,
    )
    workers = [Service(["worker"], worker_env, tmp_path / f"worker{n}.log") for n in range(2)]
    redis: Redis = Redis.from_url(valkey.url)
    limits = httpx.Limits(max_connections=senders + 8, max_keepalive_connections=senders + 8)
    async with AsyncExitStack() as stack:
        stack.callback(valkey.stop)
        stack.push_async_callback(redis.aclose)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10, limits=limits))
        for service in (sandbox, web, *workers):
            stack.callback(service.stop)
            service.start()
        await wait_ready(http, f"{sandbox_url}/sandbox/faults", sandbox)
        await wait_ready(http, f"{web_url}/readyz", web)
        yield Cluster(tmp_path, valkey, redis, http, sandbox, sandbox_url, web, web_url, workers)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, {"contact.yaml": CONTACT_MAPPING}) as running:
        yield running


async def _when(condition: Callable[[], bool], action: Callable[[], Awaitable[None]]) -> None:
    await until(condition, timeout_s=DEADLINE_S, interval_s=0.05)
    await action()


@pytest.mark.slow
async def test_every_accepted_webhook_is_exactly_one_lead_through_faults_and_crashes(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    put = await cluster.http.put(f"{cluster.sandbox_url}/sandbox/faults", json=FAULTS)
    assert put.status_code == 200
    provider = Provider(cluster.http, f"{cluster.web_url}/hooks/contact")
    emails = [f"lead{n:05d}@example.com" for n in range(WEBHOOKS)]
    resend = set(random.Random(7).sample(emails, int(WEBHOOKS * RESEND_SHARE)))
    resent_answers: list[tuple[str, int, str]] = []
    gate = asyncio.Semaphore(SENDERS)

    async def one(email: str) -> None:
        msg_id = f"msg_{email}"
        async with gate:
            status, delivery_id = await provider.deliver(email, msg_id)
            provider.first_status[email] = status
            provider.delivery_ids[email] = delivery_id
            if email in resend:  # the provider did not see our answer and sends it again
                again, again_id = await provider.deliver(email, msg_id)
                resent_answers.append((email, again, again_id))

    def answered(n: int) -> Callable[[], bool]:
        return lambda: len(provider.first_status) >= n

    def share(fraction: float) -> int:
        return round(WEBHOOKS * fraction)

    chaos = asyncio.gather(
        _when(answered(share(0.125)), lambda: cluster.kill_worker(0)),
        _when(answered(share(0.35)), cluster.restart_valkey),
        _when(answered(share(0.55)), lambda: cluster.kill_worker(1)),
        _when(answered(share(0.8)), lambda: cluster.kill_worker(0)),
        _when(answered(WEBHOOKS), lambda: cluster.kill_worker(1)),
    )
    await asyncio.gather(*(one(email) for email in emails))
    sent_s = time.monotonic() - started
    await chaos

    async def settled() -> bool:
        return await cluster.redis.zcard(arq_adapter.QUEUE_KEY) == 0 and not await cluster.redis.zcard(
            keys.DLQ
        )

    await until(settled, timeout_s=DEADLINE_S * 1.25, interval_s=0.2)
    wall_s = time.monotonic() - started

    # -- what the providers were told ---------------------------------------------------------
    assert set(provider.first_status) == set(emails)
    accepted_202 = sum(1 for s in provider.first_status.values() if s == 202)
    for email, status, delivery_id in resent_answers:
        assert (status, delivery_id) == (200, provider.delivery_ids[email])

    # -- what the upstream holds: exactly one entry and one `table.entry.added` per webhook -----
    entries = (await cluster.http.get(f"{cluster.sandbox_url}/sandbox/entries")).json()["entries"]
    events = (await cluster.http.get(f"{cluster.sandbox_url}/sandbox/events")).json()["events"]
    per_email = Counter(e["data"]["email"] for e in entries)
    assert set(per_email) == set(emails)
    assert max(per_email.values()) == 1
    added = Counter(e["entryId"] for e in events if e["type"] == "table.entry.added")
    assert set(added) == {e["id"] for e in entries}
    assert max(added.values()) == 1

    # -- the queue's own records -------------------------------------------------------------
    delivery_keys = [k async for k in cluster.redis.scan_iter(match=keys.DELIVERY + "*", count=1000)]
    async with cluster.redis.pipeline(transaction=False) as pipe:
        for key in delivery_keys:
            pipe.hmget(key, ["status", "attempts"])
        rows = await pipe.execute()
    statuses = Counter(row[0].decode() for row in rows)
    retries = sum(int(row[1] or 0) for row in rows)
    assert statuses == {"delivered": WEBHOOKS}
    assert sorted(k.decode()[len(keys.DELIVERY) :] for k in delivery_keys) == sorted(
        provider.delivery_ids.values()
    )
    assert await cluster.redis.zcard(keys.DLQ) == 0

    # -- the counters agree ------------------------------------------------------------------
    # The web's own counters (it was never restarted); a 503 whose write did land (Valkey died
    # between the write and the answer) is a 200 duplicate on the provider's retry.
    page = (await cluster.http.get(f"{cluster.web_url}/metrics")).text
    assert sample(page, "leadbridge_webhooks_total", mapping="contact", outcome="accepted") == accepted_202
    assert (
        sample(page, "leadbridge_webhooks_total", mapping="contact", outcome="duplicate")
        == provider.answers[200]
    )
    assert (
        sample(page, "leadbridge_webhooks_total", mapping="contact", outcome="unavailable")
        == provider.answers[503]
    )
    assert sample(page, "leadbridge_queue_depth") == 0
    assert sample(page, "leadbridge_dlq_size") == 0
    assert len(cluster.kills) == 5

    figures = {
        "webhooks": WEBHOOKS,
        "accepted (202)": accepted_202,
        "duplicates (200)": provider.answers[200],
        "provider resends": len(resent_answers),
        "503 during the Valkey restart": provider.answers[503],
        "no answer (connection refused)": provider.refused,
        "entries": len(entries),
        "table.entry.added": sum(added.values()),
        "failed attempts retried": retries,
        "kills": ", ".join(cluster.kills),
        "senders": SENDERS,
        "deliveries in flight per worker": WORKER_SETTINGS["BRIDGE_WORKER_CONCURRENCY"],
        "sending took (s)": round(sent_s, 1),
        "wall time (s)": round(wall_s, 1),
        "webhooks accepted per second": round(WEBHOOKS / sent_s),
        "leads delivered per second (wall)": round(WEBHOOKS / wall_s),
    }
    with capsys.disabled():
        print("\nfault suite:", *(f"  {k}: {v}" for k, v in figures.items()), sep="\n")
