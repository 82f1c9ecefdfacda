"""ReplyPipe (bridge/queue/replypipe.py): pipelined commands over a connection of the client's pool,
their replies handed to a callback from the read callback, on a real Valkey."""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis.asyncio import Redis

from bridge.queue.replypipe import ReplyPipe


class Outcomes:
    """What the `done` callbacks got, in the order they were called."""

    def __init__(self) -> None:
        self.got: list[tuple[str, list[Any] | Exception]] = []
        self.changed = asyncio.Event()

    def done(self, name: str) -> Any:
        def record(outcome: list[Any] | Exception) -> None:
            self.got.append((name, outcome))
            self.changed.set()

        return record

    async def count(self, n: int) -> None:
        async with asyncio.timeout(5):
            while len(self.got) < n:
                self.changed.clear()
                await self.changed.wait()


async def test_pipelined_exchanges_get_their_own_replies_in_order(redis_client: Redis) -> None:
    await redis_client.set("text", "not a number")
    pipe = await ReplyPipe.open(redis_client)
    outcomes = Outcomes()
    pipe.send(
        [hiredis.pack_command(("SET", "a", "1")), hiredis.pack_command(("INCR", "a"))], outcomes.done("first")
    )
    pipe.send([hiredis.pack_command(("INCR", "text"))], outcomes.done("second"))
    assert pipe.in_flight == 2
    await outcomes.count(2)
    (first, replies), (second, errors) = outcomes.got
    assert (first, replies) == ("first", [b"OK", 2])
    assert second == "second"
    assert isinstance(errors, list)
    assert isinstance(errors[0], hiredis.ReplyError)  # a server error is a reply, not the end
    assert not pipe.closed
    assert pipe.in_flight == 0
    await pipe.give_back()
    assert pipe.closed


async def test_a_lost_connection_fails_what_is_in_flight_once(redis_client: Redis) -> None:
    pipe = await ReplyPipe.open(redis_client)
    outcomes = Outcomes()
    pipe.send([hiredis.pack_command(("BLPOP", "never", 0))], outcomes.done("blocked"))
    await redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await outcomes.count(1)
    assert outcomes.got[0][0] == "blocked"
    assert isinstance(outcomes.got[0][1], ConnectionError)
    assert pipe.closed
    pipe.send([hiredis.pack_command(("PING",))], outcomes.done("after"))  # answered at once
    assert isinstance(outcomes.got[1][1], ConnectionError)
    assert len(outcomes.got) == 2
    await pipe.give_back()


async def test_no_reply_within_the_socket_timeout_fails_the_connection(redis_url: str) -> None:
    client = Redis.from_url(redis_url, socket_timeout=0.2)
    try:
        pipe = await ReplyPipe.open(client)
        outcomes = Outcomes()
        pipe.send([hiredis.pack_command(("BLPOP", "never", 0))], outcomes.done("blocked"))
        pipe.send([hiredis.pack_command(("PING",))], outcomes.done("behind it"))
        await outcomes.count(2)
        assert [name for name, _ in outcomes.got] == ["blocked", "behind it"]
        assert all(isinstance(outcome, TimeoutError) for _, outcome in outcomes.got)
        assert pipe.closed
        await pipe.give_back()
    finally:
        await client.aclose()
