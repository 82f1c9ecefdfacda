"""The worker: turns one stored delivery into lead calls on the Connect API.

    deliver(delivery_id)
      load the delivery → parse its body again with its provider → plan it with the *current*
      mapping → apply each command in order, one at a time per (link, key), skipping commands
      already applied (exactly-once effects across retries, crashes and replays)
      → delivered | ignored | retry later | dead-letter with the reason

Every create/patch carries an idempotency key derived from (mapping, event id, command index,
step), identical on every attempt and on replay. A command's success is recorded before the job
completes; if the worker dies in between, the rerun skips it, and if it dies between the
upstream's answer and that record, the rerun sends the same key and the upstream replays.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from redis.asyncio import Redis

from bridge.connect.client import ConnectClient
from bridge.connect.tables import TableCache
from bridge.errors import DeliveryError, InboundError, MappingError, UpstreamError, WaitForLink
from bridge.mapping.commands import LeadCommand
from bridge.metrics import Metrics
from bridge.queue import deliveries, keys
from bridge.queue.arq_adapter import Retry
from bridge.queue.deliveries import Attempt, DeliveryRecord
from bridge.settings import Settings

log = logging.getLogger("bridge.worker")

LOCK_LEASE_MS = 30_000
LOCK_WAIT_S = 5.0
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class MappingLookup(Protocol):
    def get(self, name: str) -> Any: ...


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by a window since the delivery arrived."""

    base_s: float
    max_delay_s: float
    window_s: float
    max_attempts: int
    link_wait_s: float

    def delay_s(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        ceiling = min(self.max_delay_s, self.base_s * (2 ** max(0, attempt - 1)))
        delay = rng.uniform(0, ceiling)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return delay

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            base_s=settings.retry_base_s,
            max_delay_s=settings.retry_max_delay_s,
            window_s=settings.retry_window_s,
            max_attempts=settings.retry_max_attempts,
            link_wait_s=settings.link_wait_s,
        )


def idempotency_key(mapping: str, event_id: str, index: int, step: str) -> str:
    return f"lb-{keys.digest(mapping + chr(0) + event_id)}-{index}-{step}"


class Deliverer:
    """Everything one worker process needs to deliver; `deliver` is the arq job function."""

    def __init__(
        self,
        *,
        redis: Redis,
        mappings: MappingLookup,
        connect: ConnectClient,
        tables: TableCache,
        enrich: Any,
        settings: Settings,
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.redis = redis
        self.mappings = mappings
        self.connect = connect
        self.tables = tables
        self.enrich = enrich
        self.settings = settings
        self.metrics = metrics
        self.policy = RetryPolicy.from_settings(settings)
        self.rng = rng or random.Random()
        self._release = redis.register_script(RELEASE_LOCK)

    async def deliver(self, ctx: dict[str, Any], delivery_id: str) -> str:
        record = await deliveries.load(self.redis, delivery_id)
        if record is None:
            log.warning("delivery expired before it was processed", extra={"delivery_id": delivery_id})
            return "expired"
        if record.status in ("delivered", "ignored"):
            return record.status
        self.metrics.jobs_in_flight.inc()
        started = time.perf_counter()
        try:
            return await self._deliver(record)
        finally:
            self.metrics.jobs_in_flight.dec()
            log.debug(
                "job finished",
                extra={
                    "delivery_id": delivery_id,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )

    async def _deliver(self, record: DeliveryRecord) -> str:
        mapping = self.mappings.get(record.mapping)
        if mapping is None:
            return await self._dead(record, f"no mapping named {record.mapping!r} is loaded", None)
        command: LeadCommand | None = None
        try:
            payload = mapping.provider.reparse(record.body, record.headers)
            plan = await mapping.plan(
                payload, enrich=self.enrich, max_commands=self.settings.max_commands_per_delivery
            )
            if plan.ignored:
                self.metrics.webhooks.labels(mapping=record.mapping, outcome="ignored").inc()
                await deliveries.set_status(self.redis, record.id, "ignored")
                log.info("delivery ignored by the mapping's `when`", extra=self._ids(record))
                return "ignored"
            for command in plan.commands:
                await self._apply_once(record, command)
            command = None
        except InboundError as exc:
            return await self._dead(record, f"payload no longer parses: {exc.reason}", None)
        except MappingError as exc:
            return await self._dead(record, f"mapping error: {exc.message}", command)
        except DeliveryError as exc:
            return await self._failed(record, exc, command)
        await deliveries.set_status(self.redis, record.id, "delivered")
        log.info("delivery delivered", extra={**self._ids(record), "attempt": record.attempts + 1})
        return "delivered"

    async def _failed(self, record: DeliveryRecord, exc: DeliveryError, command: LeadCommand | None) -> str:
        attempt = Attempt(
            at=time.time(),
            error=exc.message,
            retryable=exc.retryable,
            status=exc.status,
            command=command.index if command else None,
        )
        if not exc.retryable:
            await deliveries.record_attempt(self.redis, record, attempt, "retrying")
            return await self._dead(record, exc.message, command)
        attempts = await deliveries.record_attempt(self.redis, record, attempt, "retrying")
        delay = self.policy.delay_s(attempts, exc.retry_after_s, self.rng)
        age_s = time.time() - record.received_at
        window = self.policy.link_wait_s if isinstance(exc, WaitForLink) else self.policy.window_s
        if attempts >= self.policy.max_attempts or age_s + delay > window:
            reason = f"gave up after {attempts} attempts over {age_s:.0f} s: {exc.message}"
            return await self._dead(record, reason, command)
        if command is not None:
            self.metrics.commands.labels(
                mapping=record.mapping, action=command.action, outcome="retried"
            ).inc()
        log.info(
            "delivery will be retried",
            extra={
                **self._ids(record),
                "attempt": attempts,
                "retry_in_s": round(delay, 3),
                "status": exc.status,
            },
        )
        raise Retry(defer=delay)

    async def _dead(self, record: DeliveryRecord, reason: str, command: LeadCommand | None) -> str:
        await deliveries.dead_letter(
            self.redis,
            record.id,
            reason,
            command.model_dump(mode="json") if command else None,
            self.settings.retention_s,
        )
        action = command.action if command else "none"
        self.metrics.commands.labels(mapping=record.mapping, action=action, outcome="dead").inc()
        log.warning(
            "delivery dead-lettered",
            extra={**self._ids(record), "command": command.index if command else None},
        )
        return "dead"

    @staticmethod
    def _ids(record: DeliveryRecord) -> dict[str, Any]:
        return {"delivery_id": record.id, "mapping": record.mapping, "provider": record.provider}

    # -- one command, exactly once -------------------------------------------------------------

    async def _apply_once(self, record: DeliveryRecord, command: LeadCommand) -> None:
        done_key = keys.done(record.id)
        if await cast(Awaitable[bool], self.redis.hexists(done_key, str(command.index))):
            return
        lock = keys.record(keys.LOCK, command.link, command.key) if command.key is not None else None
        token = uuid.uuid4().hex
        if lock is not None:
            await self._acquire(lock, token)
        try:
            outcome, entry_id = await self._apply(record, command)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(done_key, str(command.index), entry_id or outcome)
                pipe.expire(done_key, self.settings.retention_s)
                if command.order is not None and command.key is not None and outcome != "stale":
                    pipe.set(keys.record(keys.ORDER, command.link, command.key), command.order)
                await pipe.execute()
        finally:
            if lock is not None:
                await self._release(keys=[lock], args=[token])
        self.metrics.commands.labels(mapping=record.mapping, action=command.action, outcome=outcome).inc()
        log.info(
            "command applied",
            extra={
                **self._ids(record),
                "command": command.index,
                "action": command.action,
                "outcome": outcome,
            },
        )

    async def _acquire(self, lock: str, token: str) -> None:
        deadline = time.monotonic() + LOCK_WAIT_S
        delay = 0.005
        while not await self.redis.set(lock, token, nx=True, px=LOCK_LEASE_MS):
            if time.monotonic() > deadline:
                raise UpstreamError(
                    "another worker holds this record's lock", retryable=True, retry_after_s=0.5
                )
            await asyncio.sleep(delay)  # waiting on another process's lease, not a test sync
            delay = min(delay * 2, 0.2)

    async def _apply(self, record: DeliveryRecord, command: LeadCommand) -> tuple[str, str | None]:
        if command.order is not None and command.key is not None:
            last = await self.redis.get(keys.record(keys.ORDER, command.link, command.key))
            if last is not None and _older(command.order, last.decode()):
                return "stale", None
        link_key = keys.record(keys.LINK, command.link, command.key) if command.key is not None else None
        entry_id: str | None = None
        if link_key is not None and command.action != "create":
            raw = await self.redis.get(link_key)
            entry_id = raw.decode() if raw else None
        if command.action == "patch" and entry_id is None:
            raise WaitForLink("no entry is linked to this record yet (its create may be in flight)")
        idem = idempotency_key(record.mapping, record.event_id, command.index, "")
        if entry_id is None:
            entry_id = await self._create(command, idem)
            if link_key is not None:
                await self.redis.set(link_key, entry_id)
            return "created", entry_id
        if await self._patch(command, entry_id, idem + "p"):
            return "patched", entry_id
        return "skipped", entry_id

    async def _create(self, command: LeadCommand, idem: str) -> str:
        async def build() -> dict[str, Any]:
            body: dict[str, Any] = {
                "tableId": command.table,
                "data": {k: v for k, v in command.data.items() if v is not None},
                "leadStateId": await self.tables.resolve_state(command.table, command.state),
            }
            fields = {k: v for k, v in command.custom_fields.items() if v is not None}
            if fields:
                body["customFieldData"] = await self.tables.resolve_fields(command.table, fields)
            appointment = command.extras.get("interestedInAppointmentTypeId")
            if appointment is not None:
                body["interestedInAppointmentTypeId"] = appointment
            return body

        entry = await self._send(
            command.table, build, lambda body: self.connect.create_entry(body, idem + "c")
        )
        entry_id = entry.get("id")
        if entry_id is None:
            raise UpstreamError("create answered without an entry id", retryable=False)
        # Create does not accept these two: apply them with a patch right after, same command.
        later = {
            k: v
            for k, v in command.extras.items()
            if k in ("followUpDate", "firstOpenedAt") and v is not None
        }
        if later:
            await self.connect.patch_entry(str(entry_id), later, idem + "c2")
        return str(entry_id)

    async def _patch(self, command: LeadCommand, entry_id: str, idem: str) -> bool:
        if command.is_empty_patch():
            return False

        async def build() -> dict[str, Any]:
            patch: dict[str, Any] = {}
            if command.data:
                patch["data"] = dict(command.data)
            if command.custom_fields:
                patch["customFieldData"] = await self.tables.resolve_fields(
                    command.table, dict(command.custom_fields)
                )
            if command.state is not None:
                patch["leadStateId"] = await self.tables.resolve_state(command.table, command.state)
            patch.update(command.extras)
            return patch

        await self._send(command.table, build, lambda body: self.connect.patch_entry(entry_id, body, idem))
        return True

    async def _send(
        self,
        table_id: str,
        build: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Build the body and send it; on an upstream 400 the table may have changed under us
        (a renamed or deleted custom field): refresh the cached table once, rebuild, resend."""
        for refreshed in (False, True):
            body = await build()
            try:
                return await send(body)
            except UpstreamError as exc:
                if exc.status != 400 or refreshed:
                    raise
                self.tables.invalidate(table_id)
        raise AssertionError("unreachable")


def _older(candidate: str, last: str) -> bool:
    try:
        return float(candidate) < float(last)
    except ValueError:
        return candidate < last
