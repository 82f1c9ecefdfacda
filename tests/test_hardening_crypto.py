"""Encryption at rest: sealed in Redis, opened by the worker and a DLQ replay, rotation, and a
clear error (never a crash) for a missing or wrong key."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from bridge.errors import ConfigError
from bridge.queue import crypto, deliveries, keys
from bridge.queue.crypto import DecryptError, Keyring
from bridge.queue.ingest import Accepter, Incoming
from bridge.queue.sent import SentBodies
from tests.pipeline import Pipeline, pipeline, sign
from tests.test_delivery_mapping_changes import BROKEN, _lost_create, _one_lead, _reload
from tests.test_semantics import SIMPLE, _pipeline, _send

ADMIN_TOKEN = "crypto-admin-token-71d2"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
MARKERS = {"email": "crypto.marker.5e1f@example.org", "first_name": "Quillonia"}
PAYLOAD = {"type": "contact.submitted", "data": MARKERS}


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def keyring(*encoded: str) -> Keyring:
    return Keyring.parse(",".join(encoded))


# -- the keyring ---------------------------------------------------------------------------------


def test_seal_and_open_round_trip_without_the_plaintext_in_the_sealed_value() -> None:
    ring = keyring(new_key())
    sealed = ring.seal(b"secret lead body", b"lb:d:1:body")
    assert b"secret lead body" not in sealed
    assert crypto.is_sealed(sealed)
    assert ring.open(sealed, b"lb:d:1:body") == b"secret lead body"
    assert ring.seal(b"x", b"a") != ring.seal(b"x", b"a")  # a fresh nonce each time


def test_rotation_new_key_first_old_key_still_opens() -> None:
    old, new = new_key(), new_key()
    sealed_by_old = keyring(old).seal(b"before rotation", b"aad")
    rotated = keyring(new, old)
    assert rotated.open(sealed_by_old, b"aad") == b"before rotation"
    sealed_by_new = rotated.seal(b"after rotation", b"aad")
    assert sealed_by_new[len(crypto.MAGIC) :][:4].hex() == rotated.current_key_id
    with pytest.raises(DecryptError, match=rotated.current_key_id):
        keyring(old).open(sealed_by_new, b"aad")


def test_a_missing_key_a_tampered_value_or_another_place_is_a_clear_error() -> None:
    key = new_key()
    ring = keyring(key)
    sealed = ring.seal(b"payload", crypto.aad("d1", "body"))
    missing = f"key id {ring.current_key_id}, which is not in BRIDGE_ENCRYPTION_KEYS"
    with pytest.raises(DecryptError, match=missing):
        keyring(new_key()).open(sealed, crypto.aad("d1", "body"))
    with pytest.raises(DecryptError, match="altered"):
        ring.open(sealed[:-1] + bytes([sealed[-1] ^ 1]), crypto.aad("d1", "body"))
    with pytest.raises(DecryptError, match="altered"):
        ring.open(sealed, crypto.aad("d2", "body"))  # moved to another delivery
    with pytest.raises(DecryptError, match="not in the sealed format"):
        ring.open(b'{"clear": true}', crypto.aad("d1", "body"))
    with pytest.raises(DecryptError, match="not in BRIDGE_ENCRYPTION_KEYS"):
        Keyring([]).open(sealed, crypto.aad("d1", "body"))


@pytest.mark.parametrize(
    "setting",
    ["not-base64!", base64.b64encode(b"short").decode(), new_key() + ",", "," + new_key()],
)
def test_a_malformed_key_list_is_a_config_error_that_does_not_echo_it(setting: str) -> None:
    with pytest.raises(ConfigError, match=r"BRIDGE_ENCRYPTION_KEYS: key [12] is not the base64 of 32") as err:
        Keyring.parse(setting)
    for part in setting.split(","):
        if part:
            assert part not in str(err.value)


def test_keys_never_show_in_repr_and_unset_means_off() -> None:
    key = new_key()
    ring = keyring(key)
    assert key not in repr(ring)
    assert base64.b64decode(key).hex() not in repr(ring)
    assert not Keyring.parse(None)
    assert not Keyring.parse("  ")
    assert Keyring.parse(f" {key} , {new_key()} ").key_ids[0] == ring.current_key_id


# -- the store -------------------------------------------------------------------------------------


def _incoming(body: bytes) -> Incoming:
    return Incoming(
        mapping="contact",
        provider="standard-webhooks",
        event_id=f"evt-{os.urandom(4).hex()}",
        body=body,
        headers={"content-type": "application/json"},
    )


def _accepter(redis: Redis, ring: Keyring | None) -> Accepter:
    return Accepter(redis, dedupe_window_s=60, retention_s=60, keyring=ring)


async def test_stored_sealed_loaded_open_and_clear_values_still_load(redis_client: Redis) -> None:
    body = orjson.dumps(PAYLOAD)
    ring = keyring(new_key())
    sealed = await _accepter(redis_client, ring).accept(_incoming(body))
    clear = await _accepter(redis_client, None).accept(_incoming(body))

    raw = await redis_client.hgetall(keys.delivery(sealed.delivery_id))
    assert raw[b"enc"].decode() == ring.current_key_id
    for value in raw.values():
        assert MARKERS["email"].encode() not in value
        assert b"content-type" not in value  # the headers are sealed too

    opened = await deliveries.load(redis_client, sealed.delivery_id, keyring=ring)
    assert opened is not None
    assert (opened.body, opened.payload_error) == (body, None)
    assert opened.headers == {"content-type": "application/json"}
    assert opened.encrypted_with == ring.current_key_id
    # A delivery stored before encryption was turned on still loads, keys or not.
    for ring_or_none in (ring, None):
        loaded = await deliveries.load(redis_client, clear.delivery_id, keyring=ring_or_none)
        assert loaded is not None
        assert (loaded.body, loaded.payload_error, loaded.encrypted_with) == (body, None, None)


async def test_without_the_key_the_record_loads_and_says_why_its_payload_does_not(
    redis_client: Redis,
) -> None:
    ring = keyring(new_key())
    accepted = await _accepter(redis_client, ring).accept(_incoming(orjson.dumps(PAYLOAD)))
    for other in (None, keyring(new_key()), Keyring([])):
        record = await deliveries.load(redis_client, accepted.delivery_id, keyring=other)
        assert record is not None
        assert (record.mapping, record.status) == ("contact", "queued")
        assert (record.body, record.headers) == (b"", {})
        assert record.payload_error is not None
        assert "BRIDGE_ENCRYPTION_KEYS" in record.payload_error or "no keys" in record.payload_error
        assert "payload_error" not in record.model_dump(mode="json")


async def test_a_dead_letters_failed_command_is_sealed(redis_client: Redis) -> None:
    ring = keyring(new_key())
    accepted = await _accepter(redis_client, ring).accept(_incoming(orjson.dumps(PAYLOAD)))
    command = {"action": "create", "data": MARKERS}
    await deliveries.dead_letter(
        redis_client, accepted.delivery_id, "upstream said 400", command, 60, keyring=ring
    )
    raw = await redis_client.hget(keys.delivery(accepted.delivery_id), "failed_command")
    assert raw is not None
    assert crypto.is_sealed(raw)
    assert MARKERS["email"].encode() not in raw
    opened = await deliveries.load(redis_client, accepted.delivery_id, keyring=ring)
    assert opened is not None
    assert opened.failed_command == command
    unopened = await deliveries.load(redis_client, accepted.delivery_id)
    assert unopened is not None
    assert unopened.failed_command is None
    assert unopened.reason is not None
    assert unopened.reason.startswith("(sealed")  # it may quote a lead
    assert opened.reason == "upstream said 400"


async def test_a_dead_letters_sealed_fields_and_a_pin_do_not_open_anywhere_else(redis_client: Redis) -> None:
    # The associated data binds each sealed value to its delivery and field (a pin: to its
    # idempotency key): copied elsewhere by whoever can write to Redis, it does not open there.
    ring = keyring(new_key())
    one = await _accepter(redis_client, ring).accept(_incoming(orjson.dumps(PAYLOAD)))
    two = await _accepter(redis_client, ring).accept(_incoming(orjson.dumps(PAYLOAD)))
    command = {"action": "create", "data": MARKERS}
    await deliveries.dead_letter(
        redis_client, one.delivery_id, "upstream said 400", command, 60, keyring=ring
    )
    raw = await redis_client.hgetall(keys.delivery(one.delivery_id))
    await redis_client.hset(
        keys.delivery(two.delivery_id),
        mapping={"reason": raw[b"reason"], "failed_command": raw[b"failed_command"], "body": raw[b"headers"]},
    )
    moved = await deliveries.load(redis_client, two.delivery_id, keyring=ring)
    assert moved is not None
    assert moved.failed_command is None
    assert moved.reason is not None
    assert moved.reason.startswith("(sealed")
    assert "altered" in moved.reason
    assert moved.payload_error is not None
    assert "altered" in moved.payload_error
    sent = SentBodies(redis_client, ring, retention_s=60)
    await sent.pin("idem-a", command)
    await redis_client.set(keys.sent("idem-b"), await redis_client.get(keys.sent("idem-a")) or b"")
    assert await sent.earlier("idem-b") is None
    assert await sent.earlier("idem-a") == command


# -- the whole pipeline ------------------------------------------------------------------------------


async def _raw_values(redis: Redis) -> list[bytes]:
    values: list[bytes] = []
    async for key in redis.scan_iter(match="lb:d:*"):
        values.extend((await redis.hgetall(key)).values())
    return values


async def test_encrypted_deliveries_are_unreadable_in_redis_yet_delivered_and_replayable(
    redis_url: str, tmp_path: Path
) -> None:
    key = new_key()
    async with pipeline(
        redis_url,
        tmp_path / "mappings",
        BRIDGE_ENCRYPTION_KEYS=key,
        BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
        BRIDGE_RETRY_MAX_ATTEMPTS=2,
    ) as pipe:
        assert pipe.runtime.keyring.key_ids == keyring(key).key_ids  # Runtime reads the setting
        # 1. Delivered although Redis holds only ciphertext.
        first = await pipe.send_signed(PAYLOAD)
        assert first.status_code == 202
        await pipe.wait_status(first.json()["delivery_id"], "delivered")
        # 2. Dead-lettered (upstream down), then replayed through the admin API.
        await pipe.set_faults(error_rate=1.0)
        other = {"type": "contact.submitted", "data": {**MARKERS, "email": "second." + MARKERS["email"]}}
        second = await pipe.send_signed(other)
        dead_id = second.json()["delivery_id"]
        await pipe.wait_status(dead_id, "dead")
        for value in await _raw_values(pipe.redis):
            assert MARKERS["email"].encode() not in value
            assert MARKERS["first_name"].encode() not in value
        shown = await pipe.http.get(f"{pipe.url}/admin/dlq/{dead_id}", headers=ADMIN)
        assert shown.status_code == 200
        assert shown.json()["encrypted_with"] == keyring(key).current_key_id
        assert shown.json()["failed_command"]["data"]["email"] == "second." + MARKERS["email"]
        await pipe.set_faults(error_rate=0.0)
        replay = await pipe.http.post(f"{pipe.url}/admin/dlq/{dead_id}/replay", headers=ADMIN)
        assert replay.status_code == 202
        await pipe.wait_status(dead_id, "delivered")
        emails = sorted(e["data"]["email"] for e in await pipe.entries())
        assert emails == sorted([MARKERS["email"], "second." + MARKERS["email"]])


async def test_a_worker_without_the_key_dead_letters_with_the_reason_and_a_rotated_one_replays(
    redis_url: str, tmp_path: Path
) -> None:
    old, new = new_key(), new_key()
    body = orjson.dumps(PAYLOAD)
    async with pipeline(redis_url, tmp_path / "a", worker=False, BRIDGE_ENCRYPTION_KEYS=old) as pipe:
        accepted = await pipe.post("contact", body, sign(body))
        delivery_id = accepted.json()["delivery_id"]
    # A worker that was given only a new key cannot open it: a clear reason, not a crash.
    async with pipeline(redis_url, tmp_path / "b", BRIDGE_ENCRYPTION_KEYS=new) as pipe:
        await pipe.wait_status(delivery_id, "dead")
        record = await deliveries.load(pipe.redis, delivery_id, keyring=keyring(new))
        assert record is not None
        assert record.reason is not None
        assert f"sealed with key id {keyring(old).current_key_id}" in record.reason
        assert old not in record.reason
        assert new not in record.reason
        assert await pipe.entries() == []
    # After rotation (new first, old kept), the replay opens and delivers it.
    async with pipeline(redis_url, tmp_path / "c", BRIDGE_ENCRYPTION_KEYS=f"{new},{old}") as pipe:
        assert await deliveries.enqueue_again(pipe.redis, delivery_id, 60)
        await pipe.wait_status(delivery_id, "delivered")
        assert [e["data"]["email"] for e in await pipe.entries()] == [MARKERS["email"]]


# -- pinned bodies sealed with a key the worker lacks --------------------------------------------


def _worker_keys(pipe: Pipeline, ring: Keyring) -> None:
    """Give the pipeline's worker other keys than its web (a rollout, or a rollback, in progress)."""
    deliverer = pipe.runtime.deliverer
    assert deliverer is not None
    deliverer.keyring = ring
    deliverer.sent = SentBodies(pipe.redis, ring, pipe.runtime.settings.retention_s)


async def _dead_for_want_of(pipe: Pipeline, delivery_id: str, missing: str, present: str) -> None:
    """The delivery is dead-lettered for a pin sealed with `missing`: its reason names that
    key's id, and no key itself."""
    record = await deliveries.load(pipe.redis, delivery_id, keyring=keyring(present))
    assert record is not None
    assert record.status == "dead"
    assert record.reason is not None
    assert f"sealed with key id {keyring(missing).current_key_id}" in record.reason
    assert missing not in record.reason
    assert present not in record.reason


@asynccontextmanager
async def _create_lost_by_a_newer_key(
    redis_url: str, tmp_path: Path, record_id: int, *, attempts: int
) -> AsyncIterator[tuple[Pipeline, str, str, str]]:
    """A pipeline whose web seals with `old` and whose worker with `new` first (a rotation under
    way), and the delivery `first` of a create for `record_id` applied upstream with its answer
    lost (its body pinned, sealed with `new`): (pipe, first, old, new)."""
    old, new = new_key(), new_key()
    async with _pipeline(
        redis_url,
        tmp_path,
        {"simple.yaml": SIMPLE},
        BRIDGE_RETRY_MAX_ATTEMPTS=attempts,
        BRIDGE_ENCRYPTION_KEYS=old,
    ) as pipe:
        _worker_keys(pipe, keyring(new, old))
        yield pipe, await _lost_create(pipe, record_id), old, new


async def test_a_create_in_doubt_whose_pin_cannot_be_opened_is_not_made_a_second_lead(
    redis_url: str, tmp_path: Path
) -> None:
    # A create is applied upstream, its answer lost, its delivery dead-lettered: its pinned body
    # (sealed with the worker's newest key) is the record's create in doubt. The rotation is then
    # rolled back: the worker lacks that key. The record's next event cannot read the pin to
    # adopt the entry; taking "unreadable" for "nothing pinned" forgot the doubt and created a
    # second lead. It must be dead-lettered with a reason naming the key, and go through (one
    # lead) once the key is back and it is replayed.
    async with _create_lost_by_a_newer_key(redis_url, tmp_path, 96, attempts=1) as (pipe, first, old, new):
        assert await pipe.wait_status(first, "dead") == "dead"
        _worker_keys(pipe, keyring(old))
        second = await _send(pipe, "simple", {"id": 96, "email": "b@example.com"}, "dead", "delivered")
        assert len(await pipe.entries()) == 1
        await _dead_for_want_of(pipe, second, new, old)
        _worker_keys(pipe, keyring(new, old))  # the key is back
        assert await deliveries.enqueue_again(pipe.redis, second, 60)
        await pipe.wait_status(second, "delivered")
        await _one_lead(pipe, "b@example.com")


async def test_a_retry_whose_pin_cannot_be_opened_keeps_it_and_goes_once_the_key_is_back(
    redis_url: str, tmp_path: Path
) -> None:
    # A create is applied upstream and its answer lost; its body was pinned sealed with the
    # worker's newest key. Before the retry the rotation is rolled back (the worker lacks that
    # key) and the mapping reloaded (the body built now differs). Giving way to the new body
    # sent it under the used key (422, dead-lettered) and overwrote the pin: once the key was
    # back, a replay sent the new body again (422 again) and the entry was never linked (the
    # record's next event: a second lead). The pin must be kept, the delivery dead-lettered with
    # a reason naming the key, and its replay with the key back link the one entry.
    async with _create_lost_by_a_newer_key(redis_url, tmp_path, 97, attempts=3) as (pipe, first, old, new):
        _worker_keys(pipe, keyring(old))
        _reload(pipe, tmp_path, SIMPLE.replace("    email: email\n", "    email: email\n    name: email\n"))
        assert await pipe.wait_status(first, "dead", "delivered") == "dead"
        await _dead_for_want_of(pipe, first, new, old)
        _worker_keys(pipe, keyring(new, old))  # the key is back
        assert await deliveries.enqueue_again(pipe.redis, first, 60)
        assert await pipe.wait_status(first, "delivered", "dead") == "delivered"
        await _send(pipe, "simple", {"id": 97, "email": "b@example.com"})
        [entry] = await pipe.entries()  # one lead, patched by the record's next event
        assert entry["data"] == {"email": "b@example.com", "name": "b@example.com"}


async def test_a_retry_whose_body_no_longer_builds_and_whose_pin_cannot_be_opened_names_the_key(
    redis_url: str, tmp_path: Path
) -> None:
    # As above, but the reloaded mapping cannot build the body at all (a state the table lacks):
    # the retry falls back on the pinned body, which the worker cannot open. The dead letter must
    # say so (the missing key), not blame the mapping: with the key back, the replay sends the
    # pinned body, whatever the mapping says now, and links the one entry.
    async with _create_lost_by_a_newer_key(redis_url, tmp_path, 98, attempts=3) as (pipe, first, old, new):
        _worker_keys(pipe, keyring(old))
        _reload(pipe, tmp_path, BROKEN)
        assert await pipe.wait_status(first, "dead", "delivered") == "dead"
        await _dead_for_want_of(pipe, first, new, old)
        _worker_keys(pipe, keyring(new, old))  # the key is back; the mapping still broken
        assert await deliveries.enqueue_again(pipe.redis, first, 60)
        assert await pipe.wait_status(first, "delivered", "dead") == "delivered"
        assert len(await pipe.entries()) == 1
