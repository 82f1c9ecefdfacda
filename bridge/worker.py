"""The worker: turns one stored delivery into lead calls on the Connect API.

    deliver(delivery_id)
      load the delivery → parse its body again with its provider → plan it with the *current*
      mapping → join the per-record order (bridge.queue.ordering) → apply each command in order:
      wait for the record's turn, take its lease lock, skip it if already applied, else call
      → delivered | ignored | retry later | wait (not an attempt) | dead-letter with the reason

Every create/patch carries an idempotency key derived from (mapping, event id, command slot,
step), identical on every attempt and on replay. A command's slot is its place in the delivery:
its position, or with `each` its element's identity (`bridge.mapping.elements`), which stays
the element's when a reloaded mapping orders or filters the list otherwise. A command's success
is recorded before the job completes; if the worker dies in between, the rerun skips it, and if
it dies between the upstream's answer and that record, the rerun sends the same key and the
upstream replays.

Failures (bridge.retry): retryable ones come back after a backoff with full jitter (Retry-After
as a floor) until the attempts or the window run out; permanent ones (other 4xx, mapping errors)
go straight to the dead-letter queue with the upstream's message (with `each`, once the other
commands have gone: `Failures`); `Deferred` ones (circuit open,
another delivery's turn) come back without counting. A job never ends without a decision: a
Redis outage puts it back, a job over BRIDGE_JOB_TIMEOUT_S is a retryable failure, and an
unexpected exception dead-letters the delivery (its type in the reason, the stack in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.connect import bodies
from bridge.connect.tables import TableCache
from bridge.errors import (
    Deferred,
    DeliveryError,
    InboundError,
    MappingError,
    MappingNotLoaded,
    UpstreamError,
    WaitForLink,
    dead_reason,
    failure_kind,
)
from bridge.failures import Failure, Failures
from bridge.mapping.commands import LeadCommand, Plan
from bridge.mapping.compiled import ENRICH_REFUSALS, CompiledMapping
from bridge.metrics import Metrics
from bridge.queue import deliveries, keys
from bridge.queue.arq_adapter import JobFinished, Retry
from bridge.queue.circuit import Upstream
from bridge.queue.crypto import Keyring
from bridge.queue.deliveries import Attempt, DeliveryRecord
from bridge.queue.ordering import Ordering, Pin, Registration, Step, Turn
from bridge.queue.sent import SentBodies, frees_key
from bridge.retry import RetryPolicy
from bridge.settings import Settings

log = logging.getLogger("bridge.worker")

FINISHED = ("delivered", "ignored", "dead")
# Runs of one delivery's job in a row whose worker died (no end of any kind recorded) before it
# is dead-lettered: more than the worker deaths of an ordinary bad day (a node lost, a rollout
# with a short grace period), few enough that a delivery that kills every worker stops soon.
MAX_WORKER_DEATHS = 5
QUEUE_DOWN_DEFER_S = (1.0, 3.0)  # a job that lost Redis comes back within this range

__all__ = ["Deliverer", "RetryPolicy", "idempotency_key", "slot"]


class MappingLookup(Protocol):
    def get(self, name: str) -> Any: ...


def idempotency_key(mapping: str, event_id: str, slot: str, step: str) -> str:
    return f"lb-{keys.digest(mapping + chr(0) + event_id)}-{slot}-{step}"


def slot(record: DeliveryRecord, command: LeadCommand) -> str:
    """What `command` is recorded done as, and its idempotency key names: its element's identity
    where it has one and the delivery goes by element (`DeliveryRecord.by_element`), else its
    position (every command of a mapping without `each`: "0")."""
    return _slot(record.by_element, command.index, command.element)


def _slot(by_element: bool, index: int, element: str | None) -> str:
    return element if by_element and element is not None else str(index)


def _by_position(done: Mapping[str, str]) -> bool:
    """Whether a done record holds positions: an earlier run went by position."""
    return any(done_as.isdigit() for done_as in done)


class Deliverer:
    """Everything one worker process needs to deliver; `deliver` is the arq job function."""

    def __init__(
        self,
        *,
        redis: Redis,
        mappings: MappingLookup,
        connect: Upstream,
        tables: TableCache,
        enrich: Any,
        settings: Settings,
        metrics: Metrics,
        rng: random.Random | None = None,
        keyring: Keyring | None = None,
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
        self.keyring = keyring
        self.ordering = Ordering(
            redis, retention_s=settings.retention_s, lease_s=settings.job_lease_s, rng=self.rng
        )
        self.sent = SentBodies(redis, keyring, settings.retention_s)

    async def deliver(
        self, ctx: dict[str, Any], delivery_id: str, preloaded: list[dict[bytes, bytes]] | None = None
    ) -> str:
        """The arq job. `preloaded`: the delivery's hashes (`deliveries.PRELOAD`) as its claim
        read them, one round trip fewer; without them they are read here."""
        try:
            if preloaded is not None:
                # Popped: the caller's list would keep the raw hashes (the body among them) for as
                # long as the job runs.
                record, done = deliveries.for_work(
                    preloaded.pop(0), preloaded.pop(0), delivery_id, self.keyring
                )
            else:
                record, done = await deliveries.load_for_work(self.redis, delivery_id, self.keyring)
            if record is None:
                # Kept for BRIDGE_RETENTION_S from its arrival, and not processed within it (no
                # worker ran for that long): what it held is gone, so it cannot be dead-lettered.
                log.error(
                    "delivery expired before it was processed: its lead is lost",
                    extra={"delivery_id": delivery_id},
                )
                return "expired"
            if record.status in FINISHED:
                # A rerun after a crash between the outcome and the job's end: tidy up, stop.
                await self.ordering.forget(record.id, record.mapping)
                return record.status
            died = record.unfinished - 1  # runs before this one that never ended
            if died >= MAX_WORKER_DEATHS:
                # It keeps killing its worker (out of memory, a crash in native code), or every
                # worker that took it was killed: rerun for ever, it would block its record's
                # line and, once its record expired, be lost. Dead-lettered, it can be replayed.
                reason = f"its worker died {died} times in a row while delivering it (out of memory? killed?)"
                return await self._dead(record, reason, None, kind="worker died")
        except (RedisError, OSError):
            raise self._queue_down(delivery_id) from None
        self.metrics.jobs_in_flight.inc()
        started = time.perf_counter()
        try:
            return await self._deliver_within_time(record, done)
        except asyncio.CancelledError:
            # A drain cut the job. Its rerun finds no attempt on record: marked, it reads the
            # bodies this run may have sent and pinned (`_send`), as a retry does.
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(deliveries.mark_cut(self.redis, record.id))
            raise
        finally:
            self.metrics.jobs_in_flight.dec()
            log.debug(
                "job finished",
                extra={
                    "delivery_id": delivery_id,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )

    async def _deliver_within_time(self, record: DeliveryRecord, done: dict[str, str]) -> str:
        budget = asyncio.timeout(self.settings.job_timeout_s)
        # The run's commands that failed for good, once it has planned (`_deliver`): a time
        # limit or an unexpected error that ends the run after them names them too.
        ran: list[Failures] = []
        try:
            async with budget:
                return await self._deliver(record, done, ran)
        except Retry:
            raise
        except TimeoutError:
            if not budget.expired():
                raise self._queue_down(record.id) from None
            return await self._guarded(self._timed_out(record, ran[0] if ran else None), record)
        except (RedisError, OSError):
            raise self._queue_down(record.id) from None
        except Exception as exc:
            log.exception("unexpected error while delivering", extra=self._ids(record))
            reason = f"internal error ({type(exc).__name__}); see the worker log"
            dead = self._dead(record, reason, None, kind="internal error", stopped=ran[0] if ran else None)
            return await self._guarded(dead, record)

    async def _timed_out(self, record: DeliveryRecord, failed: Failures | None = None) -> str:
        """The job ran out of time. When the limit struck after its outcome was written (the
        last command's end script, or the dead-letter, ran just before it), that outcome
        stands: it is not overwritten by a retry, nor the finished job queued again. `failed`:
        the run's commands that had failed for good, named if it gives up."""
        status = await deliveries.status_of(self.redis, record.id)
        if status in FINISHED:
            await self.ordering.forget(record.id, record.mapping)
            return status
        exc = UpstreamError(
            f"the delivery took longer than BRIDGE_JOB_TIMEOUT_S ({self.settings.job_timeout_s:g} s)",
            retryable=True,
        )
        return await self._failed(record, exc, None, failed)

    async def _guarded(self, step: Awaitable[str], record: DeliveryRecord) -> str:
        try:
            return await step
        except (RedisError, OSError):
            raise self._queue_down(record.id) from None

    def _queue_down(self, delivery_id: str) -> Retry:
        log.warning(
            "queue unreachable while delivering; the job will run again", extra={"delivery_id": delivery_id}
        )
        return Retry(defer=self.rng.uniform(*QUEUE_DOWN_DEFER_S))

    async def _plan(self, record: DeliveryRecord, mapping: CompiledMapping, done: Mapping[str, str]) -> Plan:
        """Parse the stored body again and plan it, leaving out the commands `done` holds (an
        earlier run applied them: planned, their `enrich` would fetch again). Then the body,
        its headers and the parsed payload are let go: a delivery waits on the upstream with
        its commands only (what the deliveries in flight hold; the stored copy stays in Redis)."""
        payload = mapping.provider.reparse(record.body, record.headers)
        record.body, record.headers = b"", {}
        skip: Callable[[int, str | None], bool] | None = None
        if done:
            # As `slot` names them (`_went_by_position` reads the mode from a non-empty `done`).
            by_element = record.by_element and not _by_position(done)

            def applied(index: int, element: str | None) -> bool:
                return _slot(by_element, index, element) in done

            skip = applied

        return await mapping.plan(
            payload,
            enrich=self.enrich,
            max_commands=self.settings.max_commands_per_delivery,
            skip=skip,
            isolate=True,
            enrich_refusals=ENRICH_REFUSALS if _first_run(record) else None,
        )

    async def _deliver(self, record: DeliveryRecord, done: dict[str, str], ran: list[Failures]) -> str:
        """Plan the delivery and apply its commands; `ran` gets this run's `Failures` once
        planned."""
        mapping = self.mappings.get(record.mapping)
        if mapping is None:
            # Meanwhile it holds up no delivery of another mapping of its link namespace.
            await self.ordering.leave_unplanned(record.id, record.mapping)
            missing = MappingNotLoaded(f"no mapping named {record.mapping!r} is loaded")
            return await self._failed(record, missing, None)
        if record.payload_error:
            reason = f"stored payload cannot be read: {record.payload_error}"
            return await self._dead(record, reason, None, kind="payload unreadable")
        command: LeadCommand | None = None
        failed: Failures | None = None
        try:
            try:
                plan = await self._plan(record, mapping, done)
            except DeliveryError as exc:
                if exc.retryable:
                    await self.ordering.leave_unplanned(record.id, record.mapping)
                raise
            if plan.ignored:
                self.metrics.count_webhook(record.mapping, "ignored")
                await deliveries.finish(self.redis, record, "ignored")
                log.info("delivery ignored by the mapping's `when`", extra=self._ids(record))
                return "ignored"
            if record.by_element and await self._went_by_position(record, plan, done):
                record.by_element = False
            owed = plan.commands  # those done already were left out of the plan (`_plan`)
            records = [(c.link, c.key) for c in owed if c.key is not None]
            pending: Registration | None = None
            previous = record.registered
            if owed and owed[0].key is not None:
                # Joined in the first command's own first round trip (`Ordering.turn`).
                pending = Registration.of(record.id, record.mapping, records, record.registered)
                record.registered = pending.join
            else:
                record.registered = await self.ordering.register(
                    record.id, record.mapping, record.seq, records, previous=record.registered
                )
            last_index: dict[tuple[str, str | None], int] = {
                (c.link, c.key): c.index for c in owed if c.key is not None
            }
            # Counted over the whole batch: a later run owes only what did not go before, and its
            # dead letter still names each failure as command N of them all (a batch that owes one
            # command now is no one-command delivery, whose reason is that command's alone).
            planned = plan.size if plan.size is not None else len(owed) + len(plan.failures)
            failed = Failures(planned, mapping.link, plan.failures, capped=_first_run(record))
            ran.append(failed)
            finished = False
            for command in owed:
                if failed.hold_back(command):
                    continue  # after a command of its record that failed: not ahead of it
                if pending is not None and command.key is None:
                    # The first command, which was to join with its turn, was held back, and
                    # this one has no turn: joined now (else, left `unplanned`, a retry would
                    # hold up every record of its link group until its next try).
                    record.registered = await self.ordering.register(
                        record.id, record.mapping, record.seq, records, previous=previous
                    )
                    pending = None
                last = last_index.get((command.link, command.key)) == command.index
                try:
                    finished = await self._apply_once(
                        record, command, last, finish=command is owed[-1] and not failed, registration=pending
                    )
                    failed.went()
                except DeliveryError as exc:
                    if exc.retryable or exc.whole:
                        raise
                    await self._failed_alone(record, command, exc, failed)
                finally:
                    pending = None
            command = None
            if failed:
                return await self._dead_for(record, failed)
        except InboundError as exc:
            return await self._dead(record, f"payload no longer parses: {exc.reason}", None, kind="payload")
        except MappingError as exc:
            # From the loop too: one about the whole delivery (`DeliveryError.whole`), perhaps
            # after others had failed for good (`stopped`).
            reason = f"mapping error: {exc.message}"
            return await self._dead(record, reason, command, kind="mapping", stopped=failed)
        except Deferred as exc:
            if self._outlives_record(record, exc.defer_s):
                reason = f"put back for longer than BRIDGE_RETENTION_S keeps it: {exc.message}"
                return await self._dead(record, reason, command, kind="held too long", stopped=failed)
            raise await self._deferral(record, exc) from None
        except WaitForLink as exc:
            if command is not None and command.key is not None:
                # Yield the record's turn: its create may come from a delivery that arrived later.
                await self.ordering.release(record.id, command.link, command.key)
            return await self._failed(record, exc, command, failed)
        except DeliveryError as exc:
            return await self._failed(record, exc, command, failed)
        if not finished:
            await deliveries.finish(self.redis, record, "delivered")
        log.info("delivery delivered", extra={**self._ids(record), "attempt": record.attempts + 1})
        # Finished by the last command's end: the delivery and its arq job, in one atomic step.
        return JobFinished("delivered") if finished else "delivered"

    async def _went_by_position(self, record: DeliveryRecord, plan: Plan, done: Mapping[str, str]) -> bool:
        """Whether an earlier run of this delivery, marked to go by element, went by position (a
        worker of the earlier version took it during a rolling upgrade): its done record holds
        positions, or, with nothing recorded done yet, it left a body pinned under a position's
        key (`_turn_pins`, `_send`: pinned before it goes, dropped once done). A request it sent
        whose answer was lost (or whose create's follow-up patch failed) is on record only
        there: the rerun must send it under that key again, which the upstream replays, not
        under the element's, which makes a second lead."""
        if done:
            return _by_position(done)
        if _first_run(record):
            return False  # nothing went yet
        # Those that failed planning too (`Plan.failures`): one may be what that run sent; its
        # replay, once the mapping is fixed, must send it under the position's key.
        planned = [(c.index, c.element) for c in plan.commands]
        planned += [(f.index, f.element) for f in plan.failures]
        pins = [
            pin
            for index, element in planned
            if element is not None
            for pin in _pins(idempotency_key(record.mapping, record.event_id, str(index), ""))
        ]
        return bool(pins) and bool(await self.redis.exists(*pins))

    async def _deferral(self, record: DeliveryRecord, exc: Deferred) -> Retry:
        """Put the job back for about `defer_s` (jittered) without counting an attempt, and
        without that time counting against its retry window."""
        delay = exc.defer_s + self.rng.uniform(0, min(1.0, 0.1 + exc.defer_s * 0.2))
        await deliveries.hold(self.redis, record.id, delay)
        log.info(
            "delivery deferred: %s",
            exc.message,
            extra={**self._ids(record), "retry_in_s": round(delay, 3)},
        )
        return Retry(defer=delay)

    def _outlives_record(self, record: DeliveryRecord, delay_s: float) -> bool:
        """Whether a try `delay_s` from now could end after the delivery's record expires (time
        held does not count against the retry window, so a delivery held long enough could
        outlive its record): it is dead-lettered instead, which keeps it for a replay."""
        retention_s = self.settings.retention_s
        margin_s = min(self.settings.job_timeout_s + 60.0, retention_s / 10)  # the try's own time
        return record.kept_s(time.time()) + delay_s + margin_s > retention_s

    async def _failed_alone(
        self, record: DeliveryRecord, command: LeadCommand, exc: DeliveryError, failed: Failures
    ) -> None:
        """One command failed for good: the delivery's others go on (`Failures`), and it is
        dead-lettered with them all at its end. Its record's line is let go meanwhile."""
        kind = failure_kind(exc)
        failed.add(command.index, command.link, command.key, dead_reason(exc), kind, exc.status, command)
        if command.key is not None:
            await self.ordering.release(record.id, command.link, command.key)
        if failed.planned == 1:
            return  # the delivery's one command: `_dead_for` logs it
        log.warning(
            "command failed for good; the delivery's other commands go on",
            extra={
                **self._ids(record),
                "command": command.index,
                "kind": kind,
                "status": exc.status,
            },
        )

    async def _dead_for(self, record: DeliveryRecord, failed: Failures) -> str:
        """Dead-letter a delivery whose every command was tried and some failed for good: on
        replay, only those (and any held behind them) go, the others are on record as done."""
        first = failed.first
        self._count_dead(record, failed, but=first)  # `_dead` counts that one
        return await self._dead(record, failed.reason(), first.command, status=first.status, kind=first.kind)

    def _count_dead(
        self, record: DeliveryRecord, failed: Failures | None, but: Failure | None = None
    ) -> None:
        """Count dead the commands that failed for good (or were held) in a delivery dead-lettered."""
        for other in failed.items if failed else ():
            if other is not but:
                action = other.command.action if other.command else "none"
                self.metrics.count_command(record.mapping, action, "dead")

    async def _failed(
        self,
        record: DeliveryRecord,
        exc: DeliveryError,
        command: LeadCommand | None,
        failed: Failures | None = None,
    ) -> str:
        attempt = Attempt(
            at=time.time(),
            error=exc.message,
            retryable=exc.retryable,
            status=exc.status,
            command=command.index if command else None,
        )
        attempts = await deliveries.record_attempt(
            self.redis, record, attempt, "retrying", keyring=self.keyring
        )
        kind = failure_kind(exc)
        dead = functools.partial(
            self._dead, record, command=command, recorded=True, status=exc.status, kind=kind, stopped=failed
        )
        if not exc.retryable:
            return await dead(exc.message)
        delay = self._next_try_in(record, attempts, exc, self.rng)
        if delay is None:
            age_s = record.retry_age_s(time.time())
            return await dead(f"gave up after {attempts} attempts over {age_s:.0f} s: {exc.message}")
        if command is not None:
            self.metrics.count_command(record.mapping, command.action, "retried")
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

    async def _dead(
        self,
        record: DeliveryRecord,
        reason: str,
        command: LeadCommand | None,
        *,
        recorded: bool = False,
        status: int | None = None,
        kind: str,
        stopped: Failures | None = None,
    ) -> str:
        """Dead-letter the delivery; unless `_failed` already did, log this attempt in its history.
        The log line names the command, the kind of failure (`kind`: "mapping", "upstream", ...)
        and the upstream's status, not the reason (it may quote a lead's values: `dlq show` has
        it). `stopped`: commands that had failed for good before this failure stopped the
        delivery (the rest was not tried), named in the reason and counted dead too."""
        if stopped:
            reason += f"; {stopped.reason(stopped=True)}"
            self._count_dead(record, stopped)
        if not recorded:
            attempt = Attempt(
                at=time.time(),
                error=reason,
                retryable=False,
                status=status,
                command=command.index if command else None,
            )
            await deliveries.record_attempt(self.redis, record, attempt, "retrying", keyring=self.keyring)
        failed = command.model_dump(mode="json") if command else None
        await deliveries.dead_letter(
            self.redis, record.id, reason, failed, self.settings.retention_s, keyring=self.keyring
        )
        await self.ordering.forget(record.id, record.mapping)
        action = command.action if command else "none"
        self.metrics.count_command(record.mapping, action, "dead")
        log.warning(
            "delivery dead-lettered",
            extra={
                **self._ids(record),
                "command": command.index if command else None,
                "kind": kind,
                "status": status,
            },
        )
        return "dead"

    @staticmethod
    def _ids(record: DeliveryRecord) -> dict[str, Any]:
        return {"delivery_id": record.id, "mapping": record.mapping, "provider": record.provider}

    def _link_group(self, record: DeliveryRecord, link: str) -> set[str]:
        """The mappings whose deliveries can touch records of this link namespace."""
        group = {record.mapping}
        current = getattr(self.mappings, "current", None)
        if current is not None:
            group.update(m.name for m in current if getattr(m, "link", None) == link)
        return group

    # -- one command, exactly once -------------------------------------------------------------

    async def _apply_once(
        self,
        record: DeliveryRecord,
        command: LeadCommand,
        last_for_key: bool,
        *,
        finish: bool,
        registration: Registration | None = None,
    ) -> bool:
        """Apply one command unless an earlier run did. With `finish` (the delivery's last
        command), a keyed command's end also marks the delivery delivered: returns True then."""
        done_as = slot(record, command)
        idem = idempotency_key(record.mapping, record.event_id, done_as, "")
        if command.key is None:
            outcome, entry_id = await self._apply(record, command, idem, None, None)
            await self._record_done(record, done_as, entry_id or outcome, _pins(idem))
            self._count(record, command, outcome)
            return False
        step = Step(record.id, record.seq, command.link, command.key, done_as, command.order_scope)
        built, pins = await self._turn_pins(command, idem)
        # its own create (pinned or not: a body that cannot be built now may have gone before)
        creates = keys.sent(idem + "c") if command.action != "patch" else ""
        group = self._link_group(record, command.link)
        turn_of = self.ordering.turn(step, group, registration, pins, creates)
        del pins  # their sealed bodies: the turn's first round trip sends them, nothing keeps them
        async with turn_of as turn:
            if turn.done:
                # An earlier run of this same job applied it (a crash, or a lease that ran out).
                if last_for_key:
                    await self.ordering.release(record.id, command.link, command.key)
                return False
            linked = turn.entry_id is not None
            pinned: dict[str, dict[str, Any]] = {}  # by step: the bodies pinned before they go
            for (name, (body, when)), earlier_body in zip(built.items(), turn.pinned, strict=True):
                if not Pin.applies(when, linked):
                    continue
                if earlier_body is not None:
                    # An earlier run pinned it, and may have sent it (killed, or its lease ran
                    # out, before any attempt was recorded): send that body, as a retry would.
                    body = await self.sent.opened(idem + name, earlier_body, body, before_send=True)
                pinned[name] = body
            del built
            outcome, entry_id = await self._apply(
                record,
                command,
                idem,
                turn.last_order,
                turn.entry_id,
                on_created=functools.partial(self.ordering.link, turn),
                pinned=pinned,
                earlier=any(found is not None for found in turn.pinned),
                orphan=functools.partial(self._adopt, record, turn) if turn.orphan else None,
            )
            await self.ordering.end(
                turn,
                entry_id or outcome,
                leave_pending=last_for_key,
                link_to=entry_id if outcome == "created" else None,
                order=command.order if command.order is not None and outcome != "stale" else None,
                finish=(record.mapping, record.registered) if finish else None,
                unpin=_pins(idem),
            )
        self._count(record, command, outcome)
        return finish

    async def _adopt(self, record: DeliveryRecord, turn: Turn) -> str | None:
        """The entry made by another delivery's create for this record whose answer never linked
        it (`Turn.orphan`: lost, and that delivery then dead-lettered, or ignored by a reloaded
        mapping), linked now: its pinned body sent again under its key, which the upstream
        answers with the entry it made (or makes it now: that delivery was accepted, so its lead
        is owed). Without it the record's next create would be a second lead for one person.
        None when there is nothing to adopt: the body is gone (refused for good, or expired), or
        the upstream refuses it for good now (the other delivery's problem, not this one's). A
        body sealed with a key that is not configured raises `PinUnreadable` (dead-lettered)."""
        orphan = turn.orphan
        if orphan is None:
            return None
        idem = orphan.removeprefix(keys.SENT)
        # Sent, perhaps applied: a pin sealed with a key this worker lacks (a rotation rolled
        # back, a key removed early) is not "nothing to adopt", which would make a second lead;
        # PinUnreadable dead-letters this delivery, which adopts the entry once the key is back.
        body = await self.sent.earlier(idem)
        if body is not None:
            try:
                entry = await self.connect.create_entry(body, idem)
            except UpstreamError as exc:
                if exc.retryable and not self._last_try(record, exc):
                    raise  # tried again with this delivery; the doubt stays recorded
                if exc.retryable:
                    # The upstream failed that body for this delivery's every try (one it keeps
                    # failing, not a stored answer it would replay): it is not dead-lettered for
                    # another delivery's body. The doubt stays recorded for the record's next event.
                    log.warning(
                        "gave up adopting an earlier delivery's create that the upstream keeps failing",
                        extra={**self._ids(record), "idempotency_key": idem, "status": exc.status},
                    )
                    return None
                entry = {}
            if entry.get("id") is not None:
                log.warning(
                    "linked the entry of an earlier delivery's create whose answer was lost",
                    extra={**self._ids(record), "idempotency_key": idem},
                )
                await self.ordering.link(turn, str(entry["id"]))
                return str(entry["id"])
        await self.ordering.settle(turn, orphan)
        return None

    def _last_try(self, record: DeliveryRecord, exc: UpstreamError) -> bool:
        """Whether this retryable failure would dead-letter the delivery (as `_failed` decides)."""
        attempts = record.attempts + 1
        return self._next_try_in(record, attempts, exc, random.Random(attempts)) is None

    def _next_try_in(
        self, record: DeliveryRecord, attempts: int, exc: DeliveryError, rng: random.Random
    ) -> float | None:
        """The pause before the delivery's next try after `attempts` failed ones ending in `exc`,
        or None: it gives up (attempts or window spent, or its record would expire first)."""
        waiting = isinstance(exc, WaitForLink | MappingNotLoaded)  # bounded by BRIDGE_LINK_WAIT_S
        age_s = record.retry_age_s(time.time())
        delay = self.policy.next_delay_s(attempts, age_s, exc.retry_after_s, rng, waiting_for_link=waiting)
        return None if delay is None or self._outlives_record(record, delay) else delay

    async def _turn_pins(
        self, command: LeadCommand, idem: str
    ) -> tuple[dict[str, tuple[dict[str, Any], str]], list[Pin]]:
        """For a keyed command: the bodies it may send, built now, by step ("c" its create, "c2"
        the patch right after it, "p" the patch of an action "patch") with when each is the one
        it sends (`Pin.when`), and the `Pin` of each, which its turn sets before anything is sent
        (no round trip of its own). So a worker killed while a request was in flight leaves the
        body it sent behind, and the rerun sends that body under the key even if its mapping or
        tables changed meanwhile (the upstream refuses a key with another body: 422,
        dead-lettered; for a create, the entry never linked and a second lead at the record's
        next event; for a patch, an update that a replay could not apply either). An upsert's
        patch is not built here: only the turn tells whether it is needed, and building and
        sending it along for every create cost CPU and memory (see `_patch`). A body that
        cannot be built now is left to the request itself, which fails there, after the turn
        has registered the delivery: that must not hold up the other records of its link group
        until its retry."""
        built: dict[str, tuple[dict[str, Any], str]] = {}
        if command.action != "patch":
            when = Pin.ALWAYS if command.action == "create" else Pin.UNLINKED
            with contextlib.suppress(DeliveryError):
                built["c"] = (await bodies.create_body(command, self.tables), when)
                later = bodies.after_create(command)
                if later:
                    built["c2"] = (later, when)
        if command.action == "patch" and not command.is_empty_patch():
            with contextlib.suppress(DeliveryError):
                built["p"] = (await bodies.patch_body(command, self.tables), Pin.LINKED)
        pins = [
            Pin(keys.sent(idem + name), self.sent.sealed(idem + name, body), when)
            for name, (body, when) in built.items()
        ]
        return built, pins

    async def _record_done(self, record: DeliveryRecord, done_as: str, result: str, unpin: list[str]) -> None:
        done_key = keys.done(record.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(done_key, done_as, result)
            pipe.expire(done_key, self.settings.retention_s)
            pipe.delete(*unpin)
            await pipe.execute()

    def _count(self, record: DeliveryRecord, command: LeadCommand, outcome: str) -> None:
        self.metrics.count_command(record.mapping, command.action, outcome)
        log.info(
            "command applied",
            extra={
                **self._ids(record),
                "command": command.index,
                "action": command.action,
                "outcome": outcome,
            },
        )

    async def _apply(
        self,
        record: DeliveryRecord,
        command: LeadCommand,
        idem: str,
        last_order: str | None,
        linked: str | None,
        *,
        on_created: Callable[[str], Awaitable[None]] | None = None,
        pinned: Mapping[str, dict[str, Any]] | None = None,
        earlier: bool = False,
        orphan: Callable[[], Awaitable[str | None]] | None = None,
    ) -> tuple[str, str | None]:
        """Create or patch under the command's idempotency key `idem`; `last_order` and `linked`
        (the record's entry id) are what the turn read for a keyed command, both None for an
        unkeyed one (always a create). `on_created` gets a new entry's id as soon as the create
        answers (see `_create`). `pinned`: the bodies the turn pinned, by step (`_turn_pins`);
        `earlier`: an earlier run had pinned one (so may have sent this command). `orphan`: with
        no entry linked, adopts the entry of another delivery's create in doubt (`_adopt`)."""
        pinned = pinned or {}
        if command.order is not None and last_order is not None and _older(command.order, last_order):
            return "stale", None
        if linked is None and orphan is not None and command.action != "create":
            linked = await orphan()
        entry_id = linked if command.action != "create" else None
        if command.action == "patch" and entry_id is None:
            raise WaitForLink("no entry is linked to this record yet (its create may be in flight)")
        # Read an earlier pin, or pin, before a request goes (see `_send`): when a delivery that
        # ran before may have sent this command already, and for an unkeyed command, which has
        # no turn to pin its create in (a worker killed while it was in flight leaves the body
        # for the rerun).
        ran_before = record.attempts > 0 or record.replayed_at is not None or record.cut or earlier
        pin_first = ran_before or command.key is None
        if entry_id is None:
            return "created", await self._create(command, idem, on_created, pin_first, pinned)
        try:
            patched = await self._patch(command, entry_id, idem + "p", pinned.get("p"))
        except UpstreamError as exc:
            if exc.status != 404 or command.action != "upsert":
                raise
            # The linked entry is gone upstream (deleted there, or a sandbox that restarted and
            # forgot it): an upsert creates, and the create's link replaces the dead one. The
            # create body is pinned before it goes (the turn pinned none: it found a link).
            log.warning(
                "linked entry not found upstream; creating a new one",
                extra={**self._ids(record), "command": command.index},
            )
            return "created", await self._create(command, idem, on_created, True, {})
        return ("patched" if patched else "skipped"), entry_id

    async def _create(
        self,
        command: LeadCommand,
        idem: str,
        on_created: Callable[[str], Awaitable[None]] | None,
        pin_first: bool,
        pinned: Mapping[str, dict[str, Any]],
    ) -> str:
        """Create the entry, then patch what a create cannot set. The entry exists from the
        create's answer on: `on_created` (a keyed command's link) is told before the patch, so a
        patch that fails for good (dead-lettered) leaves the record linked to its entry, and the
        record's next delivery patches that entry instead of creating a second one. `pinned`:
        the bodies already pinned under the create's keys, by step (see `_send`)."""
        later = bodies.after_create(command)
        entry = await self._send(
            idem + "c",
            lambda: bodies.create_body(command, self.tables),
            lambda body: self.connect.create_entry(body, idem + "c"),
            pin_first=pin_first,
            keep=bool(later),  # the command goes on: a retry may have to send this create again
            table_id=command.table,
            pinned=pinned.get("c"),
        )
        entry_id = entry.get("id")
        if entry_id is None:
            # Not about this element: the upstream made a lead it gives no id for, and would
            # for every create of a batch (leads that no record links): the delivery stops.
            raise UpstreamError("create answered without an entry id", retryable=False, whole=True)
        if later:
            if on_created is not None:
                await on_created(str(entry_id))
            await self._send(
                idem + "c2",
                lambda: _ready(later),
                lambda body: self.connect.patch_entry(str(entry_id), body, idem + "c2"),
                pin_first=pin_first,
                pinned=pinned.get("c2"),
            )
        return str(entry_id)

    async def _patch(
        self, command: LeadCommand, entry_id: str, idem: str, pinned: dict[str, Any] | None
    ) -> bool:
        """Patch the entry. The body goes pinned, so that a worker killed while it is in flight
        leaves it for the rerun: by the turn (`pinned`, an action "patch"), or else (an upsert,
        which only learns in its turn that it patches) in a round trip of its own that reads
        the pin an earlier run left (`_send` with `pin_first`)."""
        if command.is_empty_patch():
            return False
        await self._send(
            idem,
            lambda: bodies.patch_body(command, self.tables),
            lambda body: self.connect.patch_entry(entry_id, body, idem),
            pin_first=True,
            table_id=command.table,
            pinned=pinned,
        )
        return True

    async def _send(
        self,
        idem: str,
        build: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
        *,
        pin_first: bool,
        keep: bool = False,
        table_id: str | None = None,
        pinned: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Build the body and send it under the idempotency key `idem`, or the body an earlier
        attempt pinned under it (`bridge.queue.sent`). On an upstream 400 the table may have
        changed under us (a renamed or deleted custom field): refresh the cached table once,
        rebuild, resend.

        With `pin_first` (a later run, a patch of an upsert, an unkeyed create) the pin is read
        (or what is built is pinned) before sending. Without it (a delivery's first run of a
        request its turn could not pin) the body goes without a round trip, and is pinned after
        only when it may be sent again: an answer that leaves the outcome unknown (a timeout, a
        5xx, a retryable 4xx, or a request cut by the job's time limit or a drain), or success of
        a step that the rest of its command (`keep`) may make a retry repeat. `pinned`: a body
        pinned under `idem` already (a keyed command's, by its turn: `_turn_pins`), sent as it
        is and not pinned again (after a 400's table refresh, which unpins it, the body is built
        anew)."""
        # Pinned before it goes: a later run's body, and one its turn pinned (also when it is
        # rebuilt after a 400, which unpinned it). Otherwise pinned after, if need be.
        unpinned = not (pin_first or pinned is not None)
        for refreshed in (False, True):
            if pinned is not None and not refreshed:
                body = pinned
            else:
                try:
                    body = await build()
                except DeliveryError:
                    # Its mapping or table changed since an earlier attempt sent it (a state or
                    # custom field that no longer resolves): that body goes again under its key,
                    # as any retry's would, or an entry it created would never be linked (the
                    # record's next event: a second lead). After a 400 it was unpinned.
                    earlier = None if refreshed else await self.sent.earlier(idem)
                    if earlier is None:
                        raise
                    body = earlier
                else:
                    if not unpinned:
                        body = await self.sent.pin(idem, body, before_send=True)
            try:
                answer = await send(body)
            except UpstreamError as exc:
                if frees_key(exc.status, exc.retryable):
                    await self.sent.unpin(idem)
                elif unpinned:
                    await self.sent.pin(idem, body)
                if exc.status != 400 or refreshed or table_id is None:
                    raise
                self.tables.invalidate(table_id)
                continue
            except asyncio.CancelledError:
                # The job's time limit or a drain cut the request: it may have been applied.
                if unpinned:
                    with contextlib.suppress(RedisError, OSError):
                        await asyncio.shield(self.sent.pin(idem, body))
                raise
            if keep and unpinned:
                await self.sent.pin(idem, body)
            return answer
        raise AssertionError("unreachable")


def _first_run(record: DeliveryRecord) -> bool:
    """Whether this is the delivery's first run: no attempt on record, not replayed, not cut by
    a drain, no earlier run that died."""
    return not (record.attempts or record.replayed_at is not None or record.cut or record.unfinished > 1)


def _pins(idem: str) -> list[str]:
    """The pinned bodies a command may have (`bridge.queue.sent`): create, its follow-up
    patch, patch."""
    return [keys.sent(idem + step) for step in ("c", "c2", "p")]


async def _ready(body: dict[str, Any]) -> dict[str, Any]:
    return body


def _older(candidate: str, last: str) -> bool:
    try:
        return float(candidate) < float(last)
    except ValueError:
        return candidate < last
