"""Nothing secret and no lead value in clear, in the logs or anywhere in Redis.

A whole pipeline run with encryption at rest on and DEBUG logging: a delivered lead, a lead
dead-lettered by the upstream and replayed through the admin API, a mapping error, refused
requests (bad signature, bad JSON, wrong admin token). Then every emitted log line (as both
formatters write it), every Redis key and value, and /metrics are scanned for the mapping's
signing secret, the admin token, the Connect API key, the encryption key, and the marker
e-mail, phone and name put in the payloads.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from bridge.logs import ConsoleFormatter, JSONFormatter
from bridge.sandbox import DEMO_API_KEY
from tests.pipeline import Pipeline, pipeline, sign

FIXTURES = Path(__file__).parent / "fixtures" / "hardening"
SIGNING_KEY = b"leak-test-signing-key-0f3e9d2c81"
SIGNING_SECRET = "whsec_" + base64.b64encode(SIGNING_KEY).decode()
ADMIN_TOKEN = "leak-admin-token-9b7e4a"
ENCRYPTION_KEY = os.urandom(32)
EMAIL = "zephyrine.marker.7c3a@example.net"
PHONE = "+4915112349876"
NAME = "Zephyrine Quallmorrow"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
# The test's own upstream (the sandbox) may log what it receives: it is not the bridge.
NOT_THE_BRIDGE = ("bridge.sandbox",)


def needles() -> dict[str, bytes]:
    return {
        "signing secret": SIGNING_SECRET.encode(),
        "signing key (base64)": base64.b64encode(SIGNING_KEY),
        "signing key": SIGNING_KEY,
        "admin token": ADMIN_TOKEN.encode(),
        "Connect API key": DEMO_API_KEY.encode(),
        "encryption key (base64)": base64.b64encode(ENCRYPTION_KEY),
        "encryption key": ENCRYPTION_KEY,
        "e-mail": EMAIL.encode(),
        "phone": PHONE.encode(),
        "phone digits": PHONE.removeprefix("+49").encode(),
        "name": NAME.encode(),
        "surname": NAME.split()[1].encode(),
    }


def found_in(data: bytes) -> list[str]:
    low = data.lower()
    return [label for label, needle in needles().items() if needle.lower() in low]


def payload(tag: str = "", **extra: Any) -> dict[str, Any]:
    data = {"email": tag + EMAIL, "phone": PHONE, "name": NAME, **extra}
    return {"type": "contact.submitted", "data": data}


async def post(pipe: Pipeline, name: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    raw = orjson.dumps(body)
    return await pipe.post(name, raw, headers if headers is not None else sign(raw, key=SIGNING_KEY))


async def redis_dump(redis: Redis) -> list[tuple[bytes, bytes]]:
    """Every key and every value (of every type) in the database."""
    items: list[tuple[bytes, bytes]] = []
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        values: list[bytes] = []
        if kind == "string":
            values = [await redis.get(key) or b""]
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                values += [field, value]
        elif kind == "zset":
            values = [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            values = await redis.lrange(key, 0, -1)
        elif kind == "set":
            values = list(await redis.smembers(key))
        elif kind == "stream":
            values = [orjson.dumps(entry, default=repr) for entry in await redis.xrange(key)]
        else:
            pytest.fail(f"unexpected Redis type {kind} at {key!r}")
        items.append((key, key))
        items += [(key, v) for v in values]
    return items


async def run_everything(pipe: Pipeline) -> None:
    # Delivered.
    delivered = await post(pipe, "leak-contact", payload())
    assert delivered.status_code == 202
    await pipe.wait_status(delivered.json()["delivery_id"], "delivered")
    # Refused: bad signature, bad JSON, wrong admin token.
    raw = orjson.dumps(payload("forged."))
    forged = dict(sign(raw, key=SIGNING_KEY), **{"webhook-signature": "v1," + "A" * 44})
    assert (await post(pipe, "leak-contact", payload("forged."), forged)).status_code == 401
    broken = b'{"data": {"email": "' + EMAIL.encode() + b'", "name": "' + NAME.encode() + b'"'
    assert (await pipe.post("leak-contact", broken, sign(broken, key=SIGNING_KEY))).status_code == 400
    wrong = {"authorization": f"Bearer {ADMIN_TOKEN}-wrong"}
    assert (await pipe.http.get(f"{pipe.url}/admin/dlq", headers=wrong)).status_code == 401
    # Dead-lettered by a mapping error.
    strict = await post(pipe, "leak-strict", payload("strict."))
    await pipe.wait_status(strict.json()["delivery_id"], "dead")
    # Dead-lettered by the upstream, inspected and replayed through the admin API.
    await pipe.set_faults(error_rate=1.0)
    dead = await post(pipe, "leak-contact", payload("replayed."))
    dead_id = dead.json()["delivery_id"]
    await pipe.wait_status(dead_id, "dead")
    listing = await pipe.http.get(f"{pipe.url}/admin/dlq", headers=ADMIN)
    assert listing.json()["count"] == 2
    await pipe.set_faults(error_rate=0.0)
    replay = await pipe.http.post(f"{pipe.url}/admin/dlq/{dead_id}/replay", headers=ADMIN)
    assert replay.status_code == 202
    await pipe.wait_status(dead_id, "delivered")
    assert sorted(e["data"]["email"] for e in await pipe.entries()) == sorted([EMAIL, "replayed." + EMAIL])


async def test_no_secret_and_no_lead_value_in_logs_redis_or_metrics(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    files = {name: (FIXTURES / name).read_text() for name in ("leak-contact.yaml", "leak-strict.yaml")}
    async with pipeline(
        redis_url,
        tmp_path / "mappings",
        mapping_files=files,
        environ={"LEAK_SECRET": SIGNING_SECRET},
        BRIDGE_ENCRYPTION_KEYS=base64.b64encode(ENCRYPTION_KEY).decode(),
        BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
        BRIDGE_RETRY_MAX_ATTEMPTS=2,
        BRIDGE_LOG_LEVEL="debug",
    ) as pipe:
        await run_everything(pipe)
        metrics = (await pipe.http.get(f"{pipe.url}/metrics")).content
        dump = await redis_dump(pipe.redis)

    records = [r for r in caplog.records if not r.name.startswith(NOT_THE_BRIDGE)]
    assert any(r.name == "bridge.worker" and "dead-lettered" in r.getMessage() for r in records)
    assert any(r.levelno == logging.DEBUG for r in records)
    leaks = []
    for record in records:
        for text in (JSONFormatter().format(record), ConsoleFormatter().format(record), record.getMessage()):
            leaks += [(record.name, label, text[:200]) for label in found_in(text.encode())]
    assert leaks == []

    assert len(dump) > 10
    assert any(key.startswith(b"lb:d:") for key, _ in dump)
    in_redis = {(key, label) for key, value in dump for label in found_in(value)}
    assert in_redis == set()

    assert found_in(metrics) == []
