"""The bench's machinery: the servers it starts, the load it drives, the queues it fills.

    harness = Harness(work_dir, wrk_path=..., extra_env={}, patches="")
    await harness.start_infra()          # two embedded Valkeys (appendfsync always) + the sandbox
    url = await harness.start_web("serve")            # or "a", "b" (baselines), "run"
    point = await harness.wrk(url, 64, 10, "label")   # req/s, p50/p99 from wrk
    await harness.prefill_leadbridge(5000)            # deliveries stored as `serve` stores them
    ...
    harness.stop_everything()            # every process and both Valkeys (also on error)

leadbridge uses one Valkey (`lb_*`), the arq baselines the other (`base_*`), both started with
leadbridge's embedded-server configuration, so each side pays the same fsync per write.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bench.meters import CpuMeter, RssSampler, command_line
from bench.procs import Processes, free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
HOOK_PATH = "/hooks/bench-hmac"
MAPPING_NAME = "bench-hmac"
SANDBOX_KEY = "sandbox-key"
QUEUE_KEY = "arq:queue"  # the queue both arq (baselines) and leadbridge use
DLQ_KEY = "lb:dlq"
STALL_MS = 5  # Valkey's latency monitor notes events (an fsync, a fork, a command) this long or longer
# The sandbox's /bench/stats keys for creates (False) and patches (True): count, first, last.
STAT_KEYS = {False: ("creates", "first", "last"), True: ("patches", "patch_first", "patch_last")}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Harness:
    def __init__(self, work: Path, *, wrk_path: str, extra_env: Mapping[str, str], patches: str = "") -> None:
        self.work = work
        self.wrk_path = wrk_path
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.procs = Processes(work / "logs")
        self.secret = "bench-" + uuid.uuid4().hex
        self.run_id = uuid.uuid4().hex[:8]
        self.python = sys.executable
        self.valkeys: list[Any] = []
        self._seq = 0
        self.last_prefix = ""  # of the last bodies made (`bodies`)
        self.http = httpx.AsyncClient(timeout=60.0)
        self.template = work / "body.json"
        self.template.write_text(orjson.dumps(orjson.loads((BENCH / "payload.json").read_bytes())).decode())
        self.mappings = work / "mappings"
        self.mappings.mkdir()
        shutil.copy(BENCH / "mapping.yaml", self.mappings / "bench-hmac.yaml")
        self.extra_env = dict(extra_env)
        self.patches = patches
        # `python -m bridge`, or the same through bench/lb_patched.py with experimental changes
        self.leadbridge = ["-m", "bench.lb_patched"] if patches else ["-m", "bridge"]

    # -- infrastructure -------------------------------------------------------------------------

    def prefix(self, label: str) -> str:
        """A prefix for event ids that no other load of this run uses."""
        self._seq += 1
        return f"{self.run_id}{label}{self._seq}"

    async def start_infra(self) -> None:
        from bridge.queue.embedded import EmbeddedValkey

        self.lb_valkey = EmbeddedValkey(self.work / "lb").start()
        self.valkeys.append(self.lb_valkey)
        self.base_valkey = EmbeddedValkey(self.work / "base").start()
        self.valkeys.append(self.base_valkey)
        self.lb_redis = Redis.from_url(self.lb_valkey.url)
        self.base_redis = Redis.from_url(self.base_valkey.url)
        for redis in (self.lb_redis, self.base_redis):  # Valkey notes its own stalls (see stalls())
            await redis.config_set("latency-monitor-threshold", STALL_MS)
        self.sandbox_port = free_port()
        self.sandbox = f"http://127.0.0.1:{self.sandbox_port}"
        argv = [self.python, "-m", "bench.sandbox_server", "--port", str(self.sandbox_port)]
        self.procs.start("sandbox", argv, cwd=ROOT)
        await self.wait_http("sandbox", f"{self.sandbox}/bench/stats")

    @property
    def lb_valkey_pid(self) -> int | None:
        return self.lb_valkey.process.pid if self.lb_valkey.process else None

    @property
    def base_valkey_pid(self) -> int | None:
        return self.base_valkey.process.pid if self.base_valkey.process else None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.http.aclose()
        for client in (getattr(self, "lb_redis", None), getattr(self, "base_redis", None)):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def stop_everything(self) -> None:
        self.procs.stop_all()
        for server in self.valkeys:
            with contextlib.suppress(Exception):
                server.stop(timeout_s=5)

    def log_path(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    async def wait_http(self, name: str, url: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.procs.alive(name):
                raise RuntimeError(f"{name} exited at start-up; see {self.log_path(name)}")
            with contextlib.suppress(httpx.HTTPError):
                await self.http.get(url, timeout=1.0)
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{name} did not answer {url} within {timeout_s} s")

    @staticmethod
    async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.2) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await check():
                return True
            await asyncio.sleep(interval_s)
        return await check()

    # -- the sandbox ----------------------------------------------------------------------------

    async def sandbox_reset(self, latency_ms: float = 0.0, *, keep_entries: bool = False) -> None:
        """Forget the creates and patches noted; unless `keep_entries`, reset the sandbox too."""
        route = "reset-clock" if keep_entries else "reset"
        (await self.http.post(f"{self.sandbox}/bench/{route}")).raise_for_status()
        if latency_ms:
            response = await self.http.put(f"{self.sandbox}/sandbox/faults", json={"latency_ms": latency_ms})
            response.raise_for_status()

    async def sandbox_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self.http.get(f"{self.sandbox}/bench/stats")).json()
        return stats

    async def sandbox_creates(self) -> int:
        return int((await self.sandbox_stats())["creates"])

    async def sandbox_arrivals(self) -> dict[str, float]:
        response = await self.http.get(f"{self.sandbox}/bench/arrivals")
        arrivals: dict[str, float] = response.json()["arrivals"]
        return arrivals

    # -- the servers ----------------------------------------------------------------------------

    def lb_env(self, port: int, probe_port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "CONNECT_", "REDIS_URL"))}
        env.update(
            {
                "REDIS_URL": self.lb_valkey.url,
                "BRIDGE_MAPPINGS": str(self.mappings),
                "BRIDGE_DATA_DIR": str(self.work / "lb-run"),
                "BRIDGE_HOST": "127.0.0.1",
                "BRIDGE_PORT": str(port),
                "BRIDGE_WORKER_PROBE_PORT": str(probe_port),
                "BRIDGE_LOG_FORMAT": "json",
                "CONNECT_BASE_URL": self.sandbox,
                "CONNECT_API_KEY": SANDBOX_KEY,
                "BENCH_HMAC_SECRET": self.secret,
            }
        )
        env.update(self.extra_env)
        if self.patches:
            env["BENCH_PATCHES"] = self.patches
        return env

    async def start_web(self, kind: str) -> str:
        """Start a web server: baseline "a" or "b", leadbridge "serve" or "run", or "nostore"
        (`serve` storing nothing, a measuring stick). Its base URL."""
        port = free_port()
        if kind in ("a", "b"):
            name = f"web-{kind}"
            argv = [self.python, "-m", "bench.baselines", name, "--port", str(port), "--secret", self.secret]
            if kind == "b":
                argv += ["--redis", self.base_valkey.url]
            self.procs.start(name, argv, cwd=ROOT)
            await self.wait_http(name, f"http://127.0.0.1:{port}/")
        elif kind == "nostore":  # `serve` answering at once, storing nothing: see lb_patched
            env = self.lb_env(port, free_port())
            env["BENCH_PATCHES"] = ",".join(filter(None, (self.patches, "nostore")))
            self.procs.start(kind, [self.python, "-m", "bench.lb_patched", "serve"], env=env, cwd=ROOT)
            await self.wait_http(kind, f"http://127.0.0.1:{port}/healthz")
        else:
            env = self.lb_env(port, free_port())
            self.procs.start(kind, [self.python, *self.leadbridge, kind], env=env, cwd=ROOT)
            await self.wait_http(kind, f"http://127.0.0.1:{port}/healthz")
        return f"http://127.0.0.1:{port}"

    async def start_lb_worker(self) -> None:
        probe = free_port()
        env = self.lb_env(free_port(), probe)
        self.procs.start("worker", [self.python, *self.leadbridge, "worker"], env=env, cwd=ROOT)
        await self.wait_http("worker", f"http://127.0.0.1:{probe}/healthz")

    def start_naive_worker(self) -> None:
        argv = [self.python, "-m", "bench.baselines", "worker-c"]
        argv += ["--redis", self.base_valkey.url, "--upstream", self.sandbox]
        self.procs.start("worker-c", argv, cwd=ROOT)

    # -- load -----------------------------------------------------------------------------------

    async def wrk(self, base_url: str, connections: int, seconds: int, label: str) -> dict[str, Any]:
        """wrk at `connections` for `seconds`, every request a new signed event."""
        prefix = self.prefix(label)
        name = f"wrk-{prefix}-c{connections}"
        env = {
            **os.environ,
            "BENCH_SECRET": self.secret,
            "BENCH_PREFIX": prefix,
            "BENCH_TEMPLATE": str(self.template),
            "BENCH_PATH": HOOK_PATH,
        }
        argv = [self.wrk_path, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
        argv += ["-s", str(BENCH / "hooks.lua"), base_url]
        process = self.procs.start(name, argv, env=env)
        code = await asyncio.to_thread(process.wait, seconds + 30)
        self.procs.stop(name)
        text = self.log_path(name).read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith("BENCHJSON ")]
        if code != 0 or not lines:
            raise RuntimeError(f"wrk failed (exit {code}): {text[-500:]}")
        raw = orjson.loads(lines[-1][len("BENCHJSON ") :])
        seconds_run = raw["duration_us"] / 1e6
        ok = raw["requests"] - raw["errors"]["status"]
        latency = raw["latency_us"]
        return {
            "connections": connections,
            "requests": raw["requests"],
            "ok": ok,
            "errors": raw["errors"],
            "seconds": round(seconds_run, 3),
            "req_per_s": round(ok / seconds_run, 1),
            "p50_ms": latency["p50"] / 1000,
            "p90_ms": latency["p90"] / 1000,
            "p99_ms": latency["p99"] / 1000,
            "max_ms": latency["max"] / 1000,
        }

    async def loadgen(self, base_url: str, rate: float, seconds: int, label: str) -> dict[str, Any]:
        """bench/loadgen.py at a fixed rate; its result with one record per request."""
        prefix = self.prefix(label)
        name = f"loadgen-{prefix}"
        out = self.work / f"{name}.json"
        argv = [self.python, "-m", "bench.loadgen", "--url", base_url + HOOK_PATH]
        argv += ["--rate", str(rate), "--duration", str(seconds), "--connections", "64"]
        argv += [
            "--secret",
            self.secret,
            "--template",
            str(self.template),
            "--prefix",
            prefix,
            "--out",
            str(out),
        ]
        process = self.procs.start(name, argv, cwd=ROOT)
        code = await asyncio.to_thread(process.wait, seconds + 60)
        self.procs.stop(name)
        if code != 0 or not out.exists():
            raise RuntimeError(f"loadgen failed (exit {code}); see {self.log_path(name)}")
        result: dict[str, Any] = orjson.loads(out.read_bytes())
        return result

    # -- queues ---------------------------------------------------------------------------------

    async def clean_slate(self, redis: Redis, timeout_s: float = 60.0) -> None:
        """Empty a Valkey and start its measurement from the same state as any other: the data
        gone, the append-only file rewritten to nothing (BGREWRITEAOF, waited for) and every
        file write of the machine on disk (sync). Otherwise the last measurement's leftovers
        (a 200 MB file deleted, a rewrite still writing) stall this one's fsyncs: deleting a
        200 MB file made a concurrent fdatasync take 20-30 ms here, writing one 70 ms."""
        await redis.flushall()

        async def idle() -> bool:
            info = await redis.info("persistence")
            return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]

        async def rewrites_over() -> None:
            if not await self.until(idle, timeout_s, interval_s=0.05):
                raise RuntimeError(f"Valkey's append-only file rewrite did not end within {timeout_s} s")

        # A rewrite already running (Valkey starts one by itself when the file has grown) may
        # have begun before the flush: wait for it, then rewrite the empty data set, again if
        # Valkey's own timer started another in between ("already in progress").
        for _ in range(5):
            await rewrites_over()
            try:
                await redis.execute_command("BGREWRITEAOF")
                break
            except ResponseError as exc:
                if "in progress" not in str(exc):
                    raise
        else:
            raise RuntimeError("Valkey kept starting its own rewrite of the append-only file")
        await rewrites_over()
        await asyncio.to_thread(os.sync)

    @staticmethod
    async def reset_stalls(redis: Redis) -> None:
        await redis.execute_command("LATENCY", "RESET")

    @staticmethod
    async def stalls(redis: Redis) -> dict[str, int]:
        """The longest of each kind of stall (ms, STALL_MS or more) Valkey noted since
        reset_stalls: `aof-fsync-always` is an fsync of the append-only file that a write waited
        for, `fork` the start of a rewrite of that file, `command` a slow command."""
        latest = await redis.execute_command("LATENCY", "LATEST")
        return {_text(event[0]): int(event[3]) for event in latest or []}

    @staticmethod
    async def reset_command_stats(redis: Redis) -> None:
        await redis.config_resetstat()

    @staticmethod
    async def command_stats(redis: Redis, per: int) -> dict[str, float]:
        """Valkey commands run since the last reset, per unit of work (`per`), by command; commands
        run inside Lua scripts count too. `_total` is their sum, `_scripts` the EVALSHA/EVAL calls."""
        info = await redis.info("commandstats")
        counts = {
            name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in info.items()
            if isinstance(stats, dict) and name.startswith("cmdstat_")
        }
        for noise in ("info", "config|resetstat", "config", "ping", "flushall"):
            counts.pop(noise, None)
        result = {name: round(calls / max(per, 1), 2) for name, calls in sorted(counts.items())}
        result["_total"] = round(sum(counts.values()) / max(per, 1), 2)
        result["_scripts"] = round((counts.get("evalsha", 0) + counts.get("eval", 0)) / max(per, 1), 2)
        return result

    def bodies(self, label: str, count: int, *, update_of: str | None = None) -> list[bytes]:
        """`count` webhook bodies, each with its own id (in its e-mail too), under a new prefix
        made from `label` (`prefix`) or, with `update_of`, under that prefix again but with
        another first name: a new event (the body's hash) for each record of those bodies, which
        an upsert turns into a patch of the entry its first event created."""
        template = self.template.read_text()
        if update_of is not None:
            template = template.replace('"first_name":"Ada"', '"first_name":"Augusta"')
            if '"Augusta"' not in template:
                raise RuntimeError("the body template has no first name to change for an update")
        prefix = update_of if update_of is not None else self.prefix(label)
        self.last_prefix = prefix
        return [template.replace("__ID__", f"{prefix}-{i}").encode() for i in range(count)]

    async def prefill_naive(self, count: int) -> None:
        """`count` arq jobs as baseline (b) enqueues them (arq's enqueue_job, pickled payload)."""
        from arq.connections import ArqRedis

        pool = ArqRedis(connection_pool=self.base_redis.connection_pool)
        bodies = self.bodies("pn", count)
        for start in range(0, count, 200):
            chunk = bodies[start : start + 200]
            await asyncio.gather(*(pool.enqueue_job("deliver", orjson.loads(body)) for body in chunk))

    async def prefill_leadbridge(self, count: int, *, update: bool = False) -> float:
        """Store `count` deliveries exactly as `serve` does (its Accepter, default settings) into
        an empty Valkey; returns the Redis memory they take, in bytes per delivery. With
        `update`, Valkey is not emptied first (the records stay linked to their entries) and the
        deliveries are updates of the records of the last bodies made (`bodies`)."""
        from bridge.providers.base import body_hash
        from bridge.queue.ingest import Accepter, Incoming
        from bridge.settings import Settings

        defaults = Settings.model_fields
        accepter = Accepter(
            self.lb_redis,
            dedupe_window_s=int(defaults["dedupe_window_s"].default),
            retention_s=int(defaults["retention_s"].default),
        )
        if not update:
            await self.lb_redis.flushall()
        before = int((await self.lb_redis.info("memory"))["used_memory"])
        bodies = self.bodies("pl", count, update_of=self.last_prefix if update else None)
        headers = {"content-type": "application/json"}
        for start in range(0, count, 500):
            chunk = bodies[start : start + 500]
            answers = await asyncio.gather(
                *(
                    accepter.accept(Incoming(MAPPING_NAME, "hmac", body_hash(body), body, headers))
                    for body in chunk
                )
            )
            if any(answer.duplicate for answer in answers):
                raise RuntimeError("pre-fill produced duplicates")
        after = int((await self.lb_redis.info("memory"))["used_memory"])
        queued = int(await self.lb_redis.zcard(QUEUE_KEY))
        if queued != count:
            raise RuntimeError(f"pre-fill queued {queued} of {count}")
        return (after - before) / count

    async def drain(
        self, name: str, count: int, timeout_s: float, valkey_pid: int | None, *, patches: bool = False
    ) -> dict[str, Any]:
        """Wait until the sandbox has `count` creates (`patches`: patches); leads/s between its
        first and last one."""
        counted, first, last = STAT_KEYS[patches]
        pids = {name: self.procs.pid(name), "sandbox": self.procs.pid("sandbox"), "valkey": valkey_pid}
        with RssSampler(self.procs.pid(name)) as sampler, CpuMeter(pids) as cpu:

            async def done() -> bool:
                if not self.procs.alive(name):
                    raise RuntimeError(f"{name} exited; see {self.log_path(name)}")
                return int((await self.sandbox_stats())[counted]) >= count

            finished = await self.until(done, timeout_s, interval_s=0.25)
        stats = await self.sandbox_stats()
        span = stats[last] - stats[first]
        creates = int(stats[counted])
        return {
            "count": count,
            "delivered": creates,
            "complete": finished,
            "seconds": round(span, 3),
            "leads_per_s": round((creates - 1) / span, 1) if span > 0 else None,
            "rss_mib": sampler.peak,
            "uss_mib": sampler.peak_uss,
            "cpu_pct": cpu.result,
            "command": command_line(pids[name]),
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
