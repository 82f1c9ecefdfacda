"""Pinned request bodies (bridge/queue/sent.py): the body first sent under an idempotency key is
the one every later attempt sends, sealed at rest when encryption is on, and freed by an answer
that leaves the key unused upstream. The whole flow (a lost answer, then a mapping reload) is in
tests/test_semantics.py."""

from __future__ import annotations

import base64
import os

import pytest
from redis.asyncio import Redis

from bridge.queue import keys
from bridge.queue.crypto import Keyring
from bridge.queue.sent import PinUnreadable, SentBodies, frees_key

FIRST = {"tableId": "t", "data": {"email": "first@example.com"}}
SECOND = {"tableId": "t", "data": {"email": "second@example.com", "company": "Acme"}}


@pytest.mark.parametrize("encrypted", [False, True])
async def test_the_first_body_pinned_under_a_key_is_sent_again(redis_client: Redis, encrypted: bool) -> None:
    keyring = Keyring.parse(base64.b64encode(os.urandom(32)).decode()) if encrypted else None
    sent = SentBodies(redis_client, keyring, retention_s=60)
    assert await sent.pin("k1c", FIRST) == FIRST
    assert await sent.pin("k1c", SECOND) == FIRST  # a retry planned otherwise sends the first
    assert await sent.pin("k2c", SECOND) == SECOND  # another key, its own body
    stored = await redis_client.get(keys.sent("k1c"))
    assert stored is not None
    assert (b"first@example.com" in stored) is not encrypted  # lead values sealed at rest
    assert 0 < await redis_client.ttl(keys.sent("k1c")) <= 60
    await redis_client.expire(keys.sent("k1c"), 5)
    await sent.pin("k1c", SECOND)  # each send keeps the pin for the retention from then on
    assert await redis_client.ttl(keys.sent("k1c")) > 5


async def test_an_answer_that_frees_the_key_unpins_it(redis_client: Redis) -> None:
    sent = SentBodies(redis_client, None, retention_s=60)
    await sent.pin("k3p", FIRST)
    await sent.unpin("k3p")
    assert await sent.pin("k3p", SECOND) == SECOND
    # A 4xx refusing the request for good: nothing stored upstream under the key. Not 422 (the
    # key is used, with another body), nor a retryable 4xx (429, 409 in flight: they tell
    # nothing of an earlier attempt whose answer was lost), nor a 5xx or no answer (perhaps
    # applied): the pin stays.
    answers = [(400, False), (404, False), (422, False), (429, True), (409, True), (500, True), (None, True)]
    assert [frees_key(status, retryable) for status, retryable in answers] == [
        True,
        True,
        False,
        False,
        False,
        False,
        False,
    ]


async def test_a_pin_sealed_with_a_key_no_longer_configured_gives_way_only_after_its_request(
    redis_client: Redis,
) -> None:
    old = Keyring.parse(base64.b64encode(os.urandom(32)).decode())
    new = Keyring.parse(base64.b64encode(os.urandom(32)).decode())
    await SentBodies(redis_client, old, retention_s=60).pin("k4c", FIRST)
    # Before a request goes, the pin is kept and the request refused (dead-lettered, replayed
    # once the key is back): the body it holds may be the one the upstream applied.
    newer = SentBodies(redis_client, new, retention_s=60)
    with pytest.raises(PinUnreadable, match=f"sealed with key id {old.current_key_id}") as refused:
        await newer.pin("k4c", SECOND, before_send=True)
    assert not refused.value.retryable
    with pytest.raises(PinUnreadable):
        await newer.earlier("k4c")
    assert await SentBodies(redis_client, old, retention_s=60).earlier("k4c") == FIRST
    # After its request went, the body just sent replaces it.
    assert await SentBodies(redis_client, new, retention_s=60).pin("k4c", SECOND) == SECOND
    assert await SentBodies(redis_client, new, retention_s=60).pin("k4c", FIRST) == SECOND
