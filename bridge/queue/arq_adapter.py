"""The only module that imports arq: its queue, the worker, its supervision, retries.

arq is maintenance-only, so everything arq-specific stays here. A job is only an entry in arq's
queue (a sorted set of ids by due time): its id is the delivery id, and the function is always
`deliver`. The ingest batch adds the entries itself (one round trip for many deliveries instead
of arq's several per enqueue), and writes no arq job record: our `run_job` never reads one, so
there is nothing pickled to read back, and 177 bytes less per queued delivery. (A record left by
an older version is deleted with its job.)

What we change in how arq runs (`build_worker`, `run`):
- a job's claim (arq's in-progress key) is a lease of BRIDGE_JOB_LEASE_S, renewed while the job
  runs, instead of the job timeout + 10 s: a job whose worker was killed runs again soon;
- a job runs `deliver` directly (`_Worker.run_job`): no read of the job record, no try counter,
  no extra task; the Deliverer enforces BRIDGE_JOB_TIMEOUT_S itself and turns it into a retry
  (arq's own job timeout, which drops a job, is not used);
- `run` restarts arq's poll loop when Redis goes away (arq's loop ends on the first error), so a
  worker survives a Redis restart without a process restart;
- jobs are claimed in batches, one script per batch (arq claims each job with a WATCH/MULTI, four
  round trips), and a claim gives its slots back when Redis fails midway (arq's `start_jobs`
  leaks them, and after enough Redis blips a worker would run nothing);
- the poll loop polls again at once after a poll that started jobs (arq always sleeps
  `poll_delay` between polls, which caps a busy worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from arq import Retry
from arq.connections import RedisSettings
from arq.constants import default_queue_name, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, func

from bridge.aio import cancel_and_wait, stop_if_cancelled
from bridge.queue import keys

QUEUE_KEY = default_queue_name
DELIVER_FUNCTION = "deliver"
JOB_TIMEOUT_MARGIN_S = 30.0
RESTART_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)
HEALTHY_RUN_S = 10.0  # a loop that ran this long before failing starts the delays over
ESCAPED_DEFER_MS = 60_000  # a job whose function raised something unexpected comes back then

log = logging.getLogger("bridge.worker")

__all__ = [
    "QUEUE_KEY",
    "JobFinished",
    "Retry",
    "build_worker",
    "drain",
    "in_progress_key",
    "job_key",
    "redis_settings",
    "run",
]


def serialize(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def deserialize(raw: bytes) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(raw)
    return value


def job_key(delivery_id: str) -> str:
    return job_key_prefix + delivery_id


def finished_job_keys(delivery_id: str) -> list[str]:
    """The keys arq deletes when a job is done: its record, its claim, its try counter."""
    return [prefix + delivery_id for prefix in (job_key_prefix, in_progress_key_prefix, retry_key_prefix)]


class JobFinished(str):
    """What a job function returns when it already finished its own job, in the same atomic
    step as its last write (removed from the queue, its keys deleted): no finish round trip."""


def in_progress_key(delivery_id: str) -> str:
    return in_progress_key_prefix + delivery_id


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url.replace("valkey://", "redis://").replace("valkeys://", "rediss://"))
    settings.conn_retries = 0
    return settings


# A job done: it leaves the queue and its keys go, unless its delivery was replayed from the
# dead-letter queue while the job was ending (the job dead-lettered it, then an operator replayed
# it before this ran: the replay's place in the queue stays, or the replay would be lost).
# KEYS: the queue, the delivery's hash, the job's keys. ARGV: the job id.
DONE_SCRIPT = """
if redis.call('HGET', KEYS[2], 'status') ~= 'queued' then redis.call('ZREM', KEYS[1], ARGV[1]) end
for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""

# A job ended short of done (a retry, a deferral, cut by a drain): back in the queue, `incr` ms
# later ('' for as due as it was), its lease given back, and its count of runs not ended (see
# `count_runs`) back to 0. KEYS: the queue, the in-progress key, the hash counting runs (or '').
# ARGV: the job id, incr, the counting field ('' for none).
FINISH_SCRIPT = """
if ARGV[2] ~= '' then redis.call('ZINCRBY', KEYS[1], ARGV[2], ARGV[1]) end
redis.call('DEL', KEYS[2])
if ARGV[3] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], ARGV[3], 0) end
return 1
"""

# Claim many jobs in one round trip: for each id, due and not running anywhere, set its
# in-progress key (the lease) and read the hashes the job starts with. KEYS[1]: the queue. ARGV:
# in-progress key prefix, now ms, lease ms, the number N of hash prefixes to read, a field of the
# first hash that counts the job's runs not ended yet ('' for none: see `_finish`), the N
# prefixes, then the ids. Returns, per id, false (running, finished or not due) or its score
# followed by the N hashes (flat field/value lists) of prefix .. id.
CLAIM_SCRIPT = """
local prefixes = tonumber(ARGV[4])
local runs = ARGV[5]
local first = 6 + prefixes
local out = {}
for i = first, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= tonumber(ARGV[2])
     and redis.call('SET', ARGV[1] .. id, '1', 'NX', 'PX', ARGV[3]) then
    local claimed = {score}
    if runs ~= '' and prefixes > 0 and redis.call('EXISTS', ARGV[6] .. id) == 1 then
      redis.call('HINCRBY', ARGV[6] .. id, runs, 1)
    end
    for p = 1, prefixes do
      claimed[p + 1] = redis.call('HGETALL', ARGV[5 + p] .. id)
    end
    out[i - first + 1] = claimed
  else
    out[i - first + 1] = false
  end
end
return out
"""

Preloaded = list[dict[bytes, bytes]]  # the hashes a claim read for its job (`preload`)


class _Worker(Worker):
    """arq's Worker with a batched job claim that cannot leak a concurrency slot."""

    started_in_poll = 0
    _claim_script: Any = None
    _done_script: Any = None
    _finish_script: Any = None
    # Set when new jobs were queued (`wake_on_publish`): an idle poll loop looks at once.
    wake: asyncio.Event | None = None
    # Key prefixes of the hashes a job starts by reading (its id appended): read by the claim,
    # in the same round trip, and handed to the job function as `preloaded`.
    preload: tuple[str, ...] = ()
    # A field of the first preloaded hash counting the job's runs that have not ended (a claim
    # adds one, an end short of done sets it to 0): runs cut by a dead worker (SIGKILL, out of
    # memory) pile up there, so the job can tell it keeps killing its worker. '' for none.
    count_runs = ""

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim as many of `job_ids` as there are free slots, in one round trip per batch
        (arq claims one job per WATCH/MULTI, four round trips each); wait for a slot when all
        are busy, as arq does."""
        waiting = [j for j in (raw.decode() for raw in job_ids) if not self._running_here(j)]
        while waiting:
            await self.sem.acquire()
            taken = 1
            while taken < len(waiting) and not self.sem.locked():
                await self.sem.acquire()
                taken += 1
            room = min(taken, self.max_jobs - self.job_counter)
            for _ in range(taken - max(room, 0)):
                self.sem.release()
            if room <= 0:
                return
            batch, waiting = waiting[:room], waiting[room:]
            self.job_counter += room
            try:
                claims = await self._claim(batch)
            except BaseException:
                for _ in batch:
                    self._release_sem_dec_counter_on_complete()
                raise
            for job_id, claim in zip(batch, claims, strict=True):
                if claim is None:  # running elsewhere, finished, or re-deferred meanwhile
                    self._release_sem_dec_counter_on_complete()
                    continue
                task = self.loop.create_task(self.run_job(job_id, *claim))
                task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id] = task
                self.started_in_poll += 1

    async def run_job(self, job_id: str, score: int, preloaded: Preloaded | None = None) -> None:
        """arq's `run_job` for our one function, in one round trip instead of two.

        arq first reads the job record and bumps a try counter (a MULTI), then runs the
        function in another task under `wait_for`. Our job is always `deliver(delivery_id)` with
        the job id as the delivery id, tries are counted in the delivery itself, and the
        Deliverer enforces its own time limit; so this runs it directly and only does arq's
        finish: done -> the job leaves the queue; `Retry(defer)` -> it comes back then;
        cancelled (a drain) -> it stays queued and runs again. An exception that escapes the
        Deliverer (it turns every failure into a decision, so this is a bug) is logged and the
        job comes back in a minute rather than being dropped. `preloaded`: the hashes the claim
        read for it (`preload`), passed on to the function.
        """
        deliver = self.functions[DELIVER_FUNCTION].coroutine
        incr_score: int | None = None
        try:
            outcome = await (
                deliver(self.ctx, job_id, preloaded) if self.preload else deliver(self.ctx, job_id)
            )
            if isinstance(outcome, JobFinished):
                return
        except Retry as exc:
            incr_score = (exc.defer_score or 0) + (timestamp_ms() - score)
        except asyncio.CancelledError:
            await asyncio.shield(self._finish(job_id, done=False, incr_score=None))
            raise
        except Exception:
            log.exception("delivery job failed unexpectedly; it runs again", extra={"delivery_id": job_id})
            incr_score = ESCAPED_DEFER_MS + (timestamp_ms() - score)
        await asyncio.shield(self._finish(job_id, done=incr_score is None, incr_score=incr_score))

    async def _finish(self, job_id: str, *, done: bool, incr_score: int | None) -> None:
        """arq's `finish_job` (without results, which we do not keep); done, see DONE_SCRIPT."""
        if done:
            if self._done_script is None:
                self._done_script = self.pool.register_script(DONE_SCRIPT)
            names = [self.queue_name, keys.delivery(job_id), *finished_job_keys(job_id)]
            await self._done_script(keys=names, args=[job_id])
            return
        if self._finish_script is None:
            self._finish_script = self.pool.register_script(FINISH_SCRIPT)
        names = [self.queue_name, in_progress_key(job_id), self.preload[0] + job_id if self.preload else ""]
        await self._finish_script(keys=names, args=[job_id, incr_score or "", self.count_runs])

    def _running_here(self, job_id: str) -> bool:
        task = self.tasks.get(job_id)
        return task is not None and not task.done()

    async def _claim(self, job_ids: list[str]) -> list[tuple[int, Preloaded] | None]:
        if self._claim_script is None:
            self._claim_script = self.pool.register_script(CLAIM_SCRIPT)
        lease_ms = int(self.in_progress_timeout_s * 1000)
        prefixes = [len(self.preload), self.count_runs, *self.preload]
        args = [in_progress_key_prefix, timestamp_ms(), lease_ms, *prefixes, *job_ids]
        raw = await self._claim_script(keys=[self.queue_name], args=args)
        return [_claimed(item) if item else None for item in raw]


def _claimed(item: list[Any]) -> tuple[int, Preloaded]:
    score, *hashes = item
    return int(float(score)), [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in hashes]


def build_worker(
    *,
    deliver: Callable[..., Awaitable[Any]],
    redis_pool: Any,
    on_startup: Callable[[dict[str, Any]], Awaitable[None]] | None,
    ctx: dict[str, Any],
    max_jobs: int,
    job_timeout_s: float,
    job_lease_s: float = 30.0,
    poll_delay_s: float = 0.05,
    preload: tuple[str, ...] = (),
    count_runs: str = "",
) -> _Worker:
    """An arq worker running `deliver(ctx, delivery_id)` with our serializer and no result keys;
    with `preload` (key prefixes), `deliver(ctx, delivery_id, preloaded)`, the hashes
    prefix + delivery_id read by the job's claim.

    Retries are ours (the job raises `Retry(defer=...)`) and bounded by our own window, so arq's
    max_tries is set high enough never to be the one that gives up.
    """
    worker = _Worker(
        functions=[func(cast(Any, deliver), name=DELIVER_FUNCTION, max_tries=1_000_000)],
        redis_pool=redis_pool,
        on_startup=cast(Any, on_startup),
        ctx=ctx,
        max_jobs=max_jobs,
        job_timeout=job_timeout_s + JOB_TIMEOUT_MARGIN_S,
        keep_result=0,
        keep_result_forever=False,
        poll_delay=poll_delay_s,
        queue_read_limit=max(max_jobs * 2, 100),
        handle_signals=False,
        job_serializer=serialize,
        job_deserializer=deserialize,
        max_burst_jobs=-1,
        health_check_interval=3600,
    )
    # arq claims a job for job_timeout + 10 s; ours is a lease that `run` keeps renewing.
    worker.in_progress_timeout_s = job_lease_s
    worker.preload = preload
    worker.count_runs = count_runs
    return worker


async def run(worker: _Worker) -> None:
    """Run the worker until cancelled (`drain`): renew the claims of running jobs, and restart
    arq's poll loop whenever it stops on an error (Redis unreachable or restarted)."""
    renewal = asyncio.get_running_loop().create_task(_renew_claims(worker))
    worker.main_task = cast(Any, asyncio.current_task())
    failures = 0
    try:
        while True:
            started = time.monotonic()
            try:
                await _poll(worker)
            except Exception as exc:  # arq's loop ends on any error; ours does not
                stop_if_cancelled()
                if time.monotonic() - started > HEALTHY_RUN_S:
                    failures = 0
                delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)]
                failures += 1
                log.warning("worker loop stopped (%s); restarting in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
    finally:
        await cancel_and_wait(renewal)


async def _poll(worker: _Worker) -> None:
    """arq's poll loop (`Worker.main` without its start-up logging), except that it polls again
    at once after a poll that started jobs, and sleeps `poll_delay` only after an idle one."""
    worker.ctx["redis"] = worker.pool
    while True:
        worker.started_in_poll = 0
        if worker.wake is not None:
            worker.wake.clear()
        await worker._poll_iteration()
        stop_if_cancelled()
        if not worker.started_in_poll:
            await _idle(worker)


async def _idle(worker: _Worker) -> None:
    """Between polls: `poll_delay`, cut short when new jobs are announced."""
    if worker.wake is None:
        await asyncio.sleep(worker.poll_delay_s)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(worker.poll_delay_s):
            await worker.wake.wait()


async def _renew_claims(worker: Worker) -> None:
    """Extend the in-progress lease of every job this worker is running, every third of it."""
    lease_ms = int(worker.in_progress_timeout_s * 1000)
    while True:
        await asyncio.sleep(worker.in_progress_timeout_s / 3)
        # Not a job that ended and that the poll loop has not swept out yet (a saturated worker
        # waits in `start_jobs` meanwhile): it may be claimed by another worker by now, whose
        # claim must lapse if that worker dies.
        running = [job_id for job_id, task in worker.tasks.items() if not task.done()]
        if not running:
            continue
        try:
            async with worker.pool.pipeline(transaction=False) as pipe:
                for job_id in running:
                    pipe.pexpire(in_progress_key(job_id), lease_ms)  # no-op once the job has ended
                await pipe.execute()
        except Exception as exc:  # Redis away: the claims lapse, the jobs run again elsewhere
            log.debug("could not renew job claims: %s", type(exc).__name__)
        stop_if_cancelled()


def wrap_pool(redis: Any) -> Any:
    """An ArqRedis sharing the given client's connection pool (one pool per process)."""
    from arq.connections import ArqRedis

    return ArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE_KEY,
    )


async def drain(worker: Worker, grace_s: float) -> None:
    """Stop picking jobs, give running ones `grace_s` to finish, then cancel the rest.

    A cancelled job stays in the queue (arq treats cancellation as "run again"), and its
    commands are idempotent, so cutting it short loses nothing.
    """
    worker.allow_pick_jobs = False
    # Looked at again after each wait: a poll under way when the drain began (it had passed its
    # look at `allow_pick_jobs` and awaits Redis) still starts the jobs it claims, and they get
    # what is left of the grace period too, not a cancel as soon as the others end.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while (running := [t for t in worker.tasks.values() if not t.done()]) and loop.time() < deadline:
        await asyncio.wait(running, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
    for task in worker.tasks.values():
        if not task.done():
            task.cancel()
    remaining = [t for t in worker.tasks.values() if not t.done()]
    if remaining:
        await asyncio.wait(remaining, timeout=5)
    if worker.main_task is not None:
        worker.main_task.cancel()
