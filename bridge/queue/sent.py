"""The body each idempotency key was first sent with, kept while the command is not done.

The upstream keeps a key's first 2xx answer and refuses the same key with another body (422).
A retry plans its delivery again, and the body can come out different: the mapping was reloaded,
an `enrich` source answered otherwise, a table's state or custom-field ids were refreshed. If an
earlier attempt was applied upstream but its answer was lost (a timeout, a dropped connection, a
5xx after the write), that retry would be refused for good: the delivery dead-lettered, its new
entry never linked to its record, and the record's next delivery would create a second lead.

So the body a command sent under its key is pinned when it may have to be sent again, and every
later attempt (retries, a replay from the dead-letter queue) sends the pinned body (when to pin
and read: `bridge.worker.Deliverer._send`). A pin sealed with a key that is not configured is
never taken for no pin before a request goes (`PinUnreadable`: dead-lettered, replayed once the
key is back). An answer that leaves the
key free unpins it (`frees_key`: a 4xx refusing the request for good, other than 422),
so that a corrected body can go: the table refresh after a 400, a replay after the mapping was
fixed. The end of a command drops its pins (`Deliverer`, with the command's done record), and a
pin expires `BRIDGE_RETENTION_S` after the last attempt that sent it. With encryption at rest
on, pins are sealed like the stored webhook (they hold lead values).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from redis.asyncio import Redis

from bridge.errors import DeliveryError
from bridge.queue import crypto, keys

log = logging.getLogger("bridge.worker")


class PinUnreadable(DeliveryError):
    """A body pinned under an idempotency key is sealed with a key that is not configured. Not
    retryable (no retry brings the key back): the delivery is dead-lettered with the key's id,
    and goes on once the key is back and it is replayed."""

    def __init__(self, idempotency_key: str, cause: crypto.KeyNotConfigured) -> None:
        super().__init__(
            f"the request body pinned under idempotency key {idempotency_key} cannot be read "
            f"({cause}); put that key back and replay",
            retryable=False,
        )


def frees_key(status: int | None, retryable: bool) -> bool:
    """Whether an answer left the key free upstream for another body: a 4xx refusing this
    request for good, but not 422 (the answer to a key already used with another body). A
    retryable one (408, 409 "in flight", 425, 429) tells nothing of an earlier attempt whose
    answer was lost: the pin stays."""
    return not retryable and status is not None and 400 <= status < 500 and status != 422


# The pinned body if there is one (its expiry pushed back), else ARGV[1], pinned now (false).
PIN_SCRIPT = """
local pinned = redis.call('GET', KEYS[1])
if pinned then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return pinned
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


class SentBodies:
    def __init__(self, redis: Redis, keyring: crypto.Keyring | None, retention_s: int) -> None:
        self._redis = redis
        self._keyring = keyring or crypto.Keyring([])
        self._retention_s = retention_s
        self._pin = redis.register_script(PIN_SCRIPT)

    async def pin(
        self, idempotency_key: str, body: dict[str, Any], *, before_send: bool = False
    ) -> dict[str, Any]:
        """What to send under `idempotency_key`: the body pinned by an earlier attempt, or
        `body`, pinned now; kept for the retention from this send on. One round trip.
        `before_send`: see `opened`."""
        mine = self.sealed(idempotency_key, body)
        current = await self._pin(keys=[keys.sent(idempotency_key)], args=[mine, self._retention_s])
        if not current:
            return body
        return await self.opened(idempotency_key, current, body, mine, before_send=before_send)

    def sealed(self, idempotency_key: str, body: dict[str, Any]) -> bytes:
        """`body` as it is pinned under `idempotency_key` (sealed when keys are set)."""
        return self._seal(idempotency_key, orjson.dumps(body))

    async def opened(
        self,
        idempotency_key: str,
        stored: bytes,
        body: dict[str, Any],
        mine: bytes | None = None,
        *,
        before_send: bool = False,
    ) -> dict[str, Any]:
        """The body pinned as `stored`; if it cannot be read, `body` (`mine`: sealed), pinned in
        its place. With `before_send` (what it returns is about to be sent), a pin sealed with a
        key that is not configured is kept and the request refused instead (`PinUnreadable`):
        that body may have been applied, another body under its key would be refused for good
        (422), and once the pin is overwritten nothing could send the first body again, even
        with the key back (its entry never linked: the record's next event, a second lead)."""
        try:
            pinned: dict[str, Any] = orjson.loads(self._open(idempotency_key, stored))
        except crypto.KeyNotConfigured as exc:
            if before_send:
                raise PinUnreadable(idempotency_key, exc) from None
            return await self._replace(idempotency_key, body, mine, exc)
        except (crypto.DecryptError, orjson.JSONDecodeError) as exc:
            return await self._replace(idempotency_key, body, mine, exc)
        return pinned

    async def _replace(
        self, idempotency_key: str, body: dict[str, Any], mine: bytes | None, exc: Exception
    ) -> dict[str, Any]:
        """A pin no key can bring back (damaged), or one replaced after its request went: this
        attempt's body it is."""
        log.warning("a pinned request body cannot be read; sending the new one (%s)", exc)
        if mine is None:
            mine = self.sealed(idempotency_key, body)
        await self._redis.set(keys.sent(idempotency_key), mine, ex=self._retention_s)
        return body

    async def earlier(self, idempotency_key: str) -> dict[str, Any] | None:
        """The body an earlier attempt pinned under `idempotency_key` (its expiry pushed back),
        or None: nothing pinned, or a damaged pin (altered, not JSON) that no key brings back.
        For a request whose body cannot be built now (its mapping or table changed since it was
        sent), and for adopting another delivery's create in doubt. A pin sealed with a key that
        is not configured raises `PinUnreadable` instead of passing for no pin: its body may
        have been applied, and "nothing was sent" would make a second lead (adopting), or
        dead-letter the delivery for its mapping when the key is what is missing."""
        name = keys.sent(idempotency_key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(name)
            pipe.expire(name, self._retention_s)
            stored, _ = await pipe.execute()
        if not stored:
            return None
        try:
            pinned: dict[str, Any] = orjson.loads(self._open(idempotency_key, stored))
        except crypto.KeyNotConfigured as exc:
            raise PinUnreadable(idempotency_key, exc) from None
        except (crypto.DecryptError, orjson.JSONDecodeError):
            return None
        return pinned

    async def unpin(self, idempotency_key: str) -> None:
        await self._redis.delete(keys.sent(idempotency_key))

    def _seal(self, idempotency_key: str, raw: bytes) -> bytes:
        if not self._keyring:
            return raw
        return self._keyring.seal(raw, _aad(idempotency_key))

    def _open(self, idempotency_key: str, stored: bytes) -> bytes:
        if not crypto.is_sealed(stored):
            return stored
        return self._keyring.open(stored, _aad(idempotency_key))


def _aad(idempotency_key: str) -> bytes:
    return f"{keys.SENT}{idempotency_key}".encode()
