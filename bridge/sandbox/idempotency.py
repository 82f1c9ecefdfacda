"""Idempotency-Key records: a key's first successful answer, replayed to every retry of it.

A request is identified by its fingerprint: method, path and the body in canonical form (JSON with
sorted keys, so key order and whitespace do not matter). For one key:

    no record                   execute; a 2xx answer is stored (a 4xx or 5xx does not lock the key)
    record, same fingerprint    the stored status and body, replayed
    record, other fingerprint   422

Requests carrying the same key are serialised by a per-key asyncio lock, so two concurrent
attempts never both execute: the second waits and gets the replay. Locks exist only while a
request holds or waits for them.

At most `max_records` records are kept (100,000 by default, some 100 MB at most): past that, the
oldest is forgotten, so a sandbox left running under load (`leadbridge run --sandbox`, the
benchmarks) does not grow without end. A retry of a forgotten key runs again, as it would on an
API that keeps keys for a limited time.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_RECORDS = 100_000


@dataclass(frozen=True, slots=True)
class StoredResponse:
    fingerprint: bytes
    status: int
    body: bytes


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def fingerprint(method: str, path: str, document: Any) -> bytes:
    """A digest of the request: method, path and the canonical JSON of its body."""
    canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b"%s\0%s\0%s" % (method.encode(), path.encode(), canonical)).digest()


class IdempotencyStore:
    """Stored 2xx responses by key (`records`) and the per-key locks of requests in flight."""

    __slots__ = ("_locks", "max_records", "records")

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self.records: dict[str, StoredResponse] = {}  # oldest first
        self.max_records = max_records
        self._locks: dict[str, _KeyLock] = {}

    @asynccontextmanager
    async def locked(self, key: str) -> AsyncIterator[None]:
        slot = self._locks.get(key)
        if slot is None:
            slot = self._locks[key] = _KeyLock()
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._locks[key]

    def get(self, key: str) -> StoredResponse | None:
        return self.records.get(key)

    def store(self, key: str, fingerprint: bytes, status: int, body: bytes) -> None:
        """Remember a successful answer; anything but a 2xx is ignored (it must not lock the key)."""
        if 200 <= status < 300:
            self.records[key] = StoredResponse(fingerprint, status, body)
            while len(self.records) > self.max_records:
                del self.records[next(iter(self.records))]

    def clear(self) -> None:
        self.records.clear()

    def __len__(self) -> int:
        return len(self.records)
