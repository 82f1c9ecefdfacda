"""The resources of one leadbridge process, built from Settings and closed in order.

`Runtime` owns the Redis pool, the metrics, the loaded mappings and the ingest batcher; with
`start_worker()` also the one pooled httpx client, the Connect client, the table cache and the
arq worker. The web app's lifespan builds one (`serve`), or the CLI builds one and shares it
between the web app and the worker (`run`). Nothing here is a module global.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from bridge import aio
from bridge.mapping.registry import MappingRegistry
from bridge.metrics import Metrics
from bridge.queue import arq_adapter, circuit, deliveries, keys, wake
from bridge.queue.crypto import Keyring
from bridge.queue.resp import packed_by_hiredis
from bridge.settings import Settings

if TYPE_CHECKING:
    # The worker's side (httpx, the Connect client, the deliverer) is imported by start_worker():
    # a `serve` process never loads it (~5 MiB of resident memory).
    import httpx

    from bridge.connect.client import EnrichClient
    from bridge.queue.ingest import Accepter
    from bridge.ratelimit import RateLimiter
    from bridge.worker import Deliverer

log = logging.getLogger("bridge.runtime")

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15
# Entries of workers gone without a goodbye (kill -9) are pruned once this old by the pruning
# worker's clock: far past HEARTBEAT_TTL_S, so a worker whose clock runs ahead of the others'
# (scores are each worker's own clock) does not remove their live heartbeats.
HEARTBEAT_PRUNE_S = 3600
CLOSE_TIMEOUT_S = 10.0
REDIS_CONNECTIONS = 32


def make_redis(url: str, max_connections: int = REDIS_CONNECTIONS) -> Redis:
    """The process's Redis client. Its pool is bounded and *blocking*: past `max_connections`,
    a command waits for a free connection (10 s at most) instead of opening another. 100 jobs
    in flight then share a few dozen connections (fewer sockets and buffers, and measured
    faster than a connection per job); ingest batches use one or two."""
    pool = BlockingConnectionPool.from_url(
        url.replace("valkey://", "redis://").replace("valkeys://", "rediss://"),
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        health_check_interval=15,
        max_connections=max_connections,
        timeout=10,
    )
    pool.connection_class = packed_by_hiredis(pool.connection_class)  # see bridge/queue/resp.py
    client: Redis = Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
    return client


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str,
        environ: Mapping[str, str] | None = None,
        upstream: tuple[str, str] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        http_transport: httpx.AsyncBaseTransport | None = None,
        embedded: bool = False,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.redis = make_redis(redis_url)
        self._environ = dict(environ if environ is not None else os.environ)
        self._mappings: MappingRegistry | None = None
        # Encryption at rest of stored payloads (empty keyring: stored in clear).
        self.keyring = Keyring.from_settings(settings)
        self._upstream = upstream
        self._http_transport = http_transport
        self._http: httpx.AsyncClient | None = None
        self._enrich: EnrichClient | None = None
        self._worker: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.deliverer: Deliverer | None = None
        del embedded

    # The web side's parts, built when first used: a worker never loads them.
    @functools.cached_property
    def accepter(self) -> Accepter:
        from bridge.queue.ingest import Accepter

        settings = self.settings
        return Accepter(
            self.redis,
            dedupe_window_s=settings.dedupe_window_s,
            retention_s=settings.retention_s,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
            keyring=self.keyring,
        )

    @functools.cached_property
    def limiter(self) -> RateLimiter:
        from bridge.ratelimit import RateLimiter

        return RateLimiter(self.redis)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def mappings(self) -> MappingRegistry:
        assert self._mappings is not None, "load_mappings() first"
        return self._mappings

    def load_mappings(self) -> None:
        """Load the mapping files; raises MappingValidationError (start-up stops)."""
        self._mappings = MappingRegistry(self.settings.mappings_path, self._environ)
        for mapping in self._mappings.current:
            if getattr(mapping.provider, "insecure", False):
                log.warning(
                    "mapping %s uses provider `none`: anyone who knows the URL can create leads",
                    mapping.name,
                    extra={"mapping": mapping.name},
                )

    def start_background(self) -> None:
        """Hot reload: SIGHUP and a poll of the mapping folder; and the store's configuration
        checked once it answers (`bridge.queue.durability`)."""
        from bridge.queue.durability import log_store_risks

        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.mappings.reload)
        self._tasks.append(loop.create_task(self.mappings.watch(), name="mapping-watch"))
        risks = log_store_risks(self.redis, self.settings.redis_wait_replicas)
        self._tasks.append(loop.create_task(risks, name="store-risks"))

    async def start_worker(self) -> None:
        from bridge.connect.client import ConnectClient, EnrichClient, build_http_client
        from bridge.connect.tables import TableCache
        from bridge.queue.circuit import CircuitBreaker, CircuitConfig, GuardedConnect
        from bridge.worker import Deliverer

        self.metrics.serve_worker()
        if self._upstream is None:
            base_url, key = self.settings.require_upstream()
            self._upstream = (base_url, key.get_secret_value())
        base_url, api_key = self._upstream

        def http_client() -> httpx.AsyncClient:
            return build_http_client(
                timeout_s=self.settings.upstream_timeout_s,
                max_connections=self.settings.upstream_max_connections,
                transport=self._http_transport,
                pool=self.settings.upstream_http,
            )

        self._http = http_client()
        # A test's transport is its one fake network: enrich shares the client there.
        shared = self._http
        self._enrich = EnrichClient(http_client if self._http_transport is None else lambda: shared)
        breaker = CircuitBreaker(
            self.redis, CircuitConfig.from_settings(self.settings), on_change=self._circuit_changed
        )
        connect = GuardedConnect(
            ConnectClient(self._http, base_url, api_key, observe=self.metrics.observe_upstream), breaker
        )
        self.deliverer = Deliverer(
            redis=self.redis,
            mappings=self.mappings,
            connect=connect,
            tables=TableCache(connect.get_table, self.settings.table_cache_ttl_s),
            enrich=self._enrich,
            settings=self.settings,
            metrics=self.metrics,
            keyring=self.keyring,
        )
        self._worker = arq_adapter.build_worker(
            deliver=self.deliverer.deliver,
            redis_pool=arq_adapter.wrap_pool(self.redis),
            on_startup=None,
            ctx={},
            max_jobs=self.settings.worker_concurrency,
            job_timeout_s=self.settings.job_timeout_s,
            job_lease_s=self.settings.job_lease_s,
            preload=deliveries.PRELOAD,
            count_runs=deliveries.UNFINISHED,
        )
        loop = asyncio.get_running_loop()
        self._worker.wake = asyncio.Event()
        self._tasks.append(loop.create_task(wake.wake_on_publish(self.redis, self._worker.wake), name="wake"))
        self._tasks.append(loop.create_task(arq_adapter.run(self._worker), name="worker-loop"))
        self._tasks.append(loop.create_task(self._heartbeat(), name="heartbeat"))
        log.info(
            "worker started",
            extra={
                "worker_id": self.worker_id,
                "concurrency": self.settings.worker_concurrency,
                "mappings": len(self.mappings.current.names),
            },
        )

    async def stop_worker(self, grace_s: float | None = None) -> None:
        """Stop taking jobs; let running ones finish within the grace period (else they rerun)."""
        if self._worker is None:
            return
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        worker, self._worker = self._worker, None
        running = sum(1 for task in worker.tasks.values() if not task.done())
        log.info("worker stopping", extra={"worker_id": self.worker_id, "running": running, "grace_s": grace})
        try:
            # drain() bounds each of its waits; this outer bound makes shutdown finite whatever
            # a job or the arq loop does (a job cut short stays queued and runs again).
            await asyncio.wait_for(arq_adapter.drain(worker, grace), timeout=grace + CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("worker did not drain in time; its running jobs will run again")
        else:
            log.info("worker stopped", extra={"worker_id": self.worker_id})

    async def close(self) -> None:
        await self.stop_worker()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT_S)
            if pending:
                log.warning(
                    "%d background task(s) did not stop in time: %s",
                    len(pending),
                    ", ".join(sorted(aio.where(task) for task in pending)),
                )
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: nothing to report at shutdown
        self._tasks.clear()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.zrem(keys.HEARTBEATS, self.worker_id)
        if self._enrich is not None:
            await self._enrich.aclose()
        if self._http is not None:
            await self._http.aclose()
        await self.redis.aclose()

    # -- observations ----------------------------------------------------------------------------

    def _circuit_changed(self, is_open: bool) -> None:
        self.metrics.circuit_open.set(1 if is_open else 0)
        log.warning("upstream circuit breaker %s", "open: deliveries pause" if is_open else "closed")

    async def _heartbeat(self) -> None:
        # One sorted set for every worker, read with one command: not a key per worker found by
        # SCAN, which walks the whole keyspace (millions of delivery keys) at each probe/scrape.
        while True:
            now = time.time()
            with contextlib.suppress(RedisError, OSError):
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.zadd(keys.HEARTBEATS, {self.worker_id: now})
                    pipe.zremrangebyscore(keys.HEARTBEATS, "-inf", f"({now - HEARTBEAT_PRUNE_S}")
                    pipe.expire(keys.HEARTBEATS, HEARTBEAT_TTL_S)
                    await pipe.execute()
            aio.stop_if_cancelled()
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def worker_heartbeats(self) -> int:
        """Worker processes with a heartbeat in the last HEARTBEAT_TTL_S."""
        try:
            return int(await self.redis.zcount(keys.HEARTBEATS, time.time() - HEARTBEAT_TTL_S, "+inf"))
        except (RedisError, OSError):
            return 0

    async def refresh_gauges(self) -> None:
        try:
            depth, age = await deliveries.queue_stats(self.redis)
            self.metrics.queue_depth.set(depth)
            self.metrics.queue_oldest_age.set(age)
            self.metrics.dlq_size.set(await deliveries.dlq_size(self.redis, self.settings.retention_s))
            self.metrics.circuit_open.set(1 if await circuit.read_state(self.redis) == "open" else 0)
            latest = await self.redis.zrange(keys.HEARTBEATS, 0, 0, desc=True, withscores=True)
            if latest:
                self.metrics.worker_heartbeat.set(float(latest[0][1]))
        except (RedisError, OSError):
            self.metrics.queue_up.set(0)
            return
        self.metrics.queue_up.set(1)
