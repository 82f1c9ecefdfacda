"""The isolation of `each` commands (one failing for good holds up none of its batch) under faults
and crashes, end to end: the processes of the fault suite (`tests/test_fault_suite.py`), an
`each` + `upsert` mapping keyed by a record id, and batches over a small pool of records, so that
records recur across batches and within one. About 10 % of the elements name a lead state the pool
lacks. The sandbox fails writes (500, 429, timeouts, lost answers: creates in doubt) while the
providers send, resend after a 2xx, and the workers are killed and restarted.

Once the queue drains, every delivery is delivered or dead, and each dead one's reason names
exactly its failed commands: its bad elements, and those of the same record held behind them.
A bad element of an ordered record may instead be skipped as stale (a newer event of its record
was applied first), and then holds nothing back. The mapping is then fixed (the bad state mapped
to a real one), the workers reload it on SIGHUP, every dead letter is replayed. At the end every
record of an accepted webhook is exactly one entry with one `table.entry.added`, the DLQ is empty,
and an ordered record's entry holds its newest event (its data and its state).
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.queue import arq_adapter, deliveries, keys
from bridge.sandbox import DEMO_API_KEY, DEMO_TABLE_ID
from tests.delivery_support import leadbridge
from tests.servers import until
from tests.test_fault_suite import FAULTS, Cluster, Provider, _when, running_cluster

MAPPING = f"""\
version: 1
name: batch
provider: standard-webhooks
verify:
  secret: ${{CONTACT_SECRET}}
table: {DEMO_TABLE_ID}
action: upsert
each: items
key: id
order: ts
lead:
  state: state
  data:
    record: id
    event: event
    ts: ts
"""
BAD_STATE = "Not A State"
# The repair: the state the pool lacks becomes one it has.
FIXED = MAPPING.replace("  state: state\n", f"  state: \"state == '{BAD_STATE}' && 'Lost' || state\"\n")
STATES = ["New", "Contacted", "Qualified", "Won"]

WEBHOOKS = 200
RECORDS = 150  # half ordered (their elements carry `ts`), half not: each in about 6 elements
# The fault suite's kinds of failure, a little fewer (lost answers a little more: creates in
# doubt): a record's events go one at a time, so a batch waits for every earlier batch of its
# records, and every failure delays that whole line.
FAULT_RATES = {
    **FAULTS,
    "error_rate": 0.08,
    "rate_limit_rate": 0.03,
    "timeout_rate": 0.03,
    "lost_response_rate": 0.10,
}
BAD_SHARE = 0.10
RESEND_SHARE = 0.10
SENDERS = 16
DEADLINE_S = 45.0  # for the queue to drain (after the sends, after the replay)
COMMAND = re.compile(r"command (\d+): ")


@dataclass
class Batch:
    msg_id: str
    items: list[dict[str, Any]]

    @property
    def raw(self) -> bytes:
        return orjson.dumps({"items": self.items})

    def bad(self) -> set[int]:
        return {n for n, item in enumerate(self.items) if item["state"] == BAD_STATE}

    def behind(self, failed: set[int]) -> set[int]:
        """The commands the failure of `failed` holds up: those, and every later one of their
        records."""
        first: dict[str, int] = {}
        for n in sorted(failed):
            first.setdefault(self.items[n]["id"], n)
        return {n for n, item in enumerate(self.items) if item["id"] in first and first[item["id"]] <= n}


@dataclass
class Batches:
    """The providers' side: the webhooks, what each got back."""

    provider: Provider
    batches: list[Batch]
    delivery_ids: dict[str, str] = field(default_factory=dict)  # msg id -> delivery id

    async def send(self, batch: Batch) -> tuple[int, str]:
        """Until a 2xx, as a provider's retry schedule would (fast here)."""
        return await self.provider.send(batch.raw, batch.msg_id)


def _batches(rng: random.Random) -> list[Batch]:
    pool = [f"o-{n:03d}" if n % 2 == 0 else f"u-{n:03d}" for n in range(RECORDS)]
    ts = 1_764_000_000_000
    used: set[int] = set()
    batches: list[Batch] = []
    for number in range(WEBHOOKS):
        items: list[dict[str, Any]] = []
        for _ in range(rng.randint(3, 6)):
            # a record twice in one batch now and then: the last one picked, again
            record = items[-1]["id"] if items and rng.random() < 0.12 else rng.choice(pool)
            state = BAD_STATE if rng.random() < BAD_SHARE else rng.choice(STATES)
            item: dict[str, Any] = {"id": record, "event": f"e{number:04d}.{len(items)}", "state": state}
            if record.startswith("o-"):
                ts += rng.randint(1, 1000)
                # events reach us out of order: a batch's times spread over the whole run
                at = ts - rng.randint(0, 60_000)
                while at in used:  # distinct: of two equal times, neither is the newer
                    at += 1
                used.add(at)
                item["ts"] = at
            items.append(item)
        batches.append(Batch(f"msg_batch_{number:04d}", items))
    return batches


async def _settled(cluster: Cluster) -> bool:
    if await cluster.redis.zcard(arq_adapter.QUEUE_KEY):
        return False
    return not [k async for k in cluster.redis.scan_iter(match=arq_adapter.in_progress_key("*"))]


async def _records(cluster: Cluster, ids: list[str]) -> dict[str, deliveries.DeliveryRecord]:
    found = {}
    for delivery_id in ids:
        record = await deliveries.load(cluster.redis, delivery_id)
        assert record is not None, delivery_id
        found[delivery_id] = record
    return found


def _reloads(cluster: Cluster) -> list[int]:
    return [w.log_text().count("mappings reloaded") for w in cluster.workers]


@pytest.mark.slow
async def test_each_isolation_keeps_every_lead_once_through_faults_crashes_and_a_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    rng = random.Random(5901)
    batches = _batches(rng)
    async with running_cluster(
        tmp_path, {"batch.yaml": MAPPING}, senders=SENDERS, worker_log_level="info"
    ) as cluster:
        put = await cluster.http.put(f"{cluster.sandbox_url}/sandbox/faults", json=FAULT_RATES)
        assert put.status_code == 200
        side = Batches(Provider(cluster.http, f"{cluster.web_url}/hooks/batch"), batches)
        resend = set(rng.sample(range(WEBHOOKS), int(WEBHOOKS * RESEND_SHARE)))
        resent: list[tuple[str, int, str]] = []
        gate = asyncio.Semaphore(SENDERS)

        async def one(number: int, batch: Batch) -> None:
            async with gate:
                _, delivery_id = await side.send(batch)
                side.delivery_ids[batch.msg_id] = delivery_id
                if number in resend:  # the provider did not see our answer and sends it again
                    again, again_id = await side.send(batch)
                    resent.append((batch.msg_id, again, again_id))

        def answered(share: float) -> Callable[[], bool]:
            return lambda: len(side.delivery_ids) >= round(WEBHOOKS * share)

        async def left(share: float) -> bool:
            # every webhook in, and the queue (each delivery until it ends) down to `share` of them
            if len(side.delivery_ids) < WEBHOOKS:
                return False
            return int(await cluster.redis.zcard(arq_adapter.QUEUE_KEY)) <= WEBHOOKS * share

        async def kill_when_left(share: float, index: int) -> None:
            await until(lambda: left(share), timeout_s=DEADLINE_S, interval_s=0.05)
            await cluster.kill_worker(index)

        chaos = asyncio.gather(
            _when(answered(0.5), lambda: cluster.kill_worker(0)),  # while webhooks arrive
            kill_when_left(0.7, 1),  # then twice while the queue drains
            kill_when_left(0.35, 0),
        )
        await asyncio.gather(*(one(n, b) for n, b in enumerate(batches)))
        sent_s = time.monotonic() - started
        await chaos
        await until(lambda: _settled(cluster), timeout_s=DEADLINE_S, interval_s=0.2)
        drained_s = time.monotonic() - started

        # -- what the providers were told ------------------------------------------------------
        assert len(side.delivery_ids) == WEBHOOKS
        assert len(set(side.delivery_ids.values())) == WEBHOOKS
        for msg_id, status, delivery_id in resent:
            assert (status, delivery_id) == (200, side.delivery_ids[msg_id])

        # -- delivered or dead; a dead one names exactly its failed commands -------------------
        ts_of: dict[str, list[int]] = defaultdict(list)
        for batch in batches:
            for item in batch.items:
                if "ts" in item:
                    ts_of[item["id"]].append(item["ts"])
        by_id = await _records(cluster, list(side.delivery_ids.values()))
        dead_ids: set[str] = set()
        stale_skipped = 0
        for batch in batches:
            record = by_id[side.delivery_ids[batch.msg_id]]
            bad = batch.bad()
            assert record.status in ("delivered", "dead"), (batch.items, record.status, record.reason)
            if record.status == "delivered":
                failed: set[int] = set()
            else:
                dead_ids.add(record.id)
                assert record.reason is not None
                named = [int(n) for n in COMMAND.findall(record.reason)]
                failed = set(named)
                assert len(named) == len(failed), record.reason
                # counted over the whole batch, whichever run of it failed them
                counted = f"{len(failed)} of {len(batch.items)} commands failed for good ("
                assert record.reason.startswith(counted), record.reason
            # Every bad element failed, except one of an ordered record skipped as stale (a newer
            # event of its record went first); what failed holds up its record's later commands.
            failing = failed & bad
            assert failed == batch.behind(failing), (batch.items, record.reason)
            for n in bad - failing:
                item = batch.items[n]
                assert "ts" in item, (batch.items, record.reason)
                assert item["ts"] < max(ts_of[item["id"]]), (batch.items, record.reason)
                stale_skipped += 1
            for n in failing:
                assert f"command {n}: mapping error: " in (record.reason or ""), record.reason
            for n in failed - failing:
                first = min(m for m in failing if batch.items[m]["id"] == batch.items[n]["id"])
                assert f"command {n}: not sent: command {first}, for the same record, failed" in (
                    record.reason or ""
                )
        assert sorted(await deliveries.dlq_ids(cluster.redis, limit=None)) == sorted(dead_ids)
        assert dead_ids  # the scenario made some

        # -- the fix, reloaded by SIGHUP, and the replay ---------------------------------------
        before = _reloads(cluster)
        (tmp_path / "mappings" / "batch.yaml").write_text(FIXED)
        for worker in cluster.workers:
            worker.kill_group(signal.SIGHUP)
        await until(lambda: all(n > b for n, b in zip(_reloads(cluster), before, strict=True)), timeout_s=10)
        code, out, err = await leadbridge(
            "dlq", "replay", "--all", environ=cluster.workers[0].environ, timeout_s=30
        )
        assert code == 0, err
        assert f"{len(dead_ids)} deliveries queued for replay" in out

        async def replayed() -> bool:
            return await _settled(cluster) and not await cluster.redis.zcard(keys.DLQ)

        await until(replayed, timeout_s=DEADLINE_S, interval_s=0.2)
        wall_s = time.monotonic() - started

        # -- every record once, its newest event last -------------------------------------------
        after = await _records(cluster, list(side.delivery_ids.values()))
        assert Counter(r.status for r in after.values()) == {"delivered": WEBHOOKS}
        assert await deliveries.dlq_ids(cluster.redis, limit=None) == []
        entries = (await cluster.http.get(f"{cluster.sandbox_url}/sandbox/entries")).json()["entries"]
        events = (await cluster.http.get(f"{cluster.sandbox_url}/sandbox/events")).json()["events"]
        per_record = Counter(e["data"]["record"] for e in entries)
        expected = {item["id"] for batch in batches for item in batch.items}
        assert set(per_record) == expected  # no lead lost
        assert max(per_record.values()) == 1  # none twice
        added = Counter(e["entryId"] for e in events if e["type"] == "table.entry.added")
        assert set(added) == {e["id"] for e in entries}
        assert max(added.values()) == 1

        state_ids = await _state_ids(cluster)
        ordered = [item for batch in batches for item in batch.items if "ts" in item]
        newest = {item["id"]: item for item in sorted(ordered, key=lambda item: item["ts"])}
        for entry in entries:
            last = newest.get(entry["data"]["record"])
            if last is None:
                continue  # a record without `order`: its events' order is not kept across a replay
            assert (entry["data"]["event"], entry["data"]["ts"]) == (last["event"], last["ts"])
            state = "Lost" if last["state"] == BAD_STATE else last["state"]
            assert entry["leadStateId"] == state_ids[state], (entry, last)

        figures = {
            "webhooks": WEBHOOKS,
            "elements": sum(len(b.items) for b in batches),
            "bad elements": sum(len(b.bad()) for b in batches),
            "of them skipped as stale": stale_skipped,
            "dead, then replayed": len(dead_ids),
            "records": len(expected),
            "provider resends": len(resent),
            "kills": ", ".join(cluster.kills),
            "sending took (s)": round(sent_s, 1),
            "drained after (s)": round(drained_s, 1),
            "wall time (s)": round(wall_s, 1),
        }
        with capsys.disabled():
            print("\neach isolation under faults:", *(f"  {k}: {v}" for k, v in figures.items()), sep="\n")


async def _state_ids(cluster: Cluster) -> dict[str, str]:
    response = await cluster.http.get(
        f"{cluster.sandbox_url}/connect/tables/{DEMO_TABLE_ID}",
        headers={"Authorization": f"Bearer {DEMO_API_KEY}"},
    )
    assert response.status_code == 200, response.text
    return {s["name"]: s["id"] for s in response.json()["leadStates"]}
