"""The optional per-mapping rate limit: shared through Redis, answered 429 with Retry-After."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from tests.pipeline import CONTACT_MAPPING, SECRET, pipeline, sign
from tests.servers import until


async def test_deliveries_over_the_limit_get_429_and_store_nothing(redis_url: str, tmp_path: Path) -> None:
    limited = CONTACT_MAPPING + "rate_limit: {per_s: 3}\n"
    async with pipeline(
        redis_url,
        tmp_path / "m",
        mapping_files={"contact.yaml": limited},
        environ={"CONTACT_SECRET": SECRET},
        worker=False,
    ) as pipe:
        bodies = [orjson.dumps({"data": {"email": f"r{i}@example.com"}}) for i in range(6)]
        # Start at the beginning of a one-second window so all six land in the same one.
        await until(lambda: time.time() % 1 < 0.3, timeout_s=2, interval_s=0.005)
        answers = await asyncio.gather(*(pipe.post("contact", raw, sign(raw)) for raw in bodies))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [202, 202, 202, 429, 429, 429]
        refused = [a for a in answers if a.status_code == 429]
        assert all(a.headers["retry-after"] == "1" for a in refused)
        assert await pipe.redis.zcard("arq:queue") == 3
        text = (await pipe.http.get(f"{pipe.url}/metrics")).text
        assert 'leadbridge_webhooks_total{mapping="contact",outcome="rate_limited"} 3.0' in text
