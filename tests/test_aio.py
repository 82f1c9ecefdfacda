"""The background loops stop when cancelled, even when a Redis call lost the cancellation.

Python 3.11's `asyncio.wait_for`, under which redis-py writes every command, returns the result of
a write that completed just as the cancellation arrived and drops the cancellation. A loop that
went on after such a call ran until the process was killed: `leadbridge worker` hung at SIGTERM
(3 of 40 starts stopped at once after their probe answered, 5 more took the 10 s close timeout).
Here each loop's Redis call is made to swallow its cancellation that way, and the loop must end.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from bridge import aio
from bridge.queue import arq_adapter, wake
from bridge.queue.ordering import Ordering
from tests.servers import until
from tests.test_worker_availability import _worker


async def _swallowing(*_: Any, **__: Any) -> None:
    """A Redis call that completes although it was cancelled (what 3.11's wait_for can do)."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0.02)


async def _ends_when_cancelled(task: asyncio.Task[Any], started: Any) -> None:
    await until(started, timeout_s=5)
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done(), aio.where(task)
    assert task.cancelled()


async def test_stop_if_cancelled_raises_after_a_swallowed_cancellation() -> None:
    ran_on: list[str] = []

    async def loop() -> None:
        while True:
            await _swallowing()
            aio.stop_if_cancelled()
            ran_on.append("an iteration after the cancellation")

    task = asyncio.get_running_loop().create_task(loop())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.cancelled()
    before = len(ran_on)
    await asyncio.sleep(0.05)
    assert len(ran_on) == before


async def test_stop_if_cancelled_is_quiet_in_a_task_never_cancelled() -> None:
    aio.stop_if_cancelled()  # nothing asked this task to stop
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_the_lease_renewal_stops_though_its_redis_call_swallowed_the_cancellation(
    redis_client: Redis,
) -> None:
    # Left running, it would renew a record's lock for ever: every later delivery for that
    # record would wait.
    ordering = Ordering(redis_client, retention_s=60, lease_s=0.03)
    calls: list[int] = []

    async def renew(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        await _swallowing()

    ordering._renew = renew  # type: ignore[assignment]
    task = asyncio.get_running_loop().create_task(ordering._keep("lock", "token"))
    await _ends_when_cancelled(task, lambda: len(calls) >= 2)


async def test_the_wake_listener_stops_though_its_read_swallowed_the_cancellation(
    redis_client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []

    async def get_message(self: PubSub, **kwargs: Any) -> None:
        reads.append(1)
        await _swallowing()

    monkeypatch.setattr(PubSub, "get_message", get_message)
    task = asyncio.get_running_loop().create_task(wake.wake_on_publish(redis_client, asyncio.Event()))
    await _ends_when_cancelled(task, lambda: len(reads) >= 2)


async def test_the_worker_loop_stops_though_its_poll_swallowed_the_cancellation(redis_client: Redis) -> None:
    async def deliver(ctx: dict[str, Any], delivery_id: str) -> None:
        raise AssertionError("nothing is queued")

    worker = _worker(deliver, redis_client, max_jobs=4)
    polls: list[int] = []

    async def poll_iteration() -> None:
        polls.append(1)
        await _swallowing()

    worker._poll_iteration = poll_iteration
    task = asyncio.get_running_loop().create_task(arq_adapter.run(worker))
    await _ends_when_cancelled(task, lambda: len(polls) >= 2)
