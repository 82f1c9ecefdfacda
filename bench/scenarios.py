"""The measurements of issue 7, each beside its baseline, each adding rows to the one table.

    ingest     (a), (b) and `leadbridge serve` under wrk at 1, 8, 64, 256 connections
    delivery   (c) and one `leadbridge worker` draining a pre-filled queue (0 and 100 ms upstream)
    whole      (d) = (b)+(c) and `leadbridge run`: saturated, sustained at a fixed rate, and the
               202-to-upstream latency at 500 webhooks/s
    mapping    CompiledMapping.plan over the shipped Typeform and HubSpot examples
    memory     RSS of serve and worker, Redis bytes per queued delivery
    clients    the HTTP client micro-benchmark (details only, not a table row)

Targets are the issue's; a row without a target is context ("info").
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.harness import DLQ_KEY, QUEUE_KEY, ROOT, Harness, log
from bench.meters import CpuMeter, RssSampler, percentile, rounded
from bench.procs import free_port
from bench.report import Row

SWEEP = (1, 8, 64, 256)
INGEST_ROUNDS = 3  # 64-connection rounds per server, taken in turns; the best counts
INGEST_RATIO = 0.50
INGEST_P99_MS = 10.0
# Fixed rates (webhooks/s) of the open-loop ingest runs, (a) and `serve` alike, 64 connections.
OPEN_LOOP_RATES = (1000, 2000, 4000, 6000)
DELIVERY_RATIO = 1.5
DELIVERY_100MS_LEADS_S = 500.0
WHOLE_RATIO = 2.0
MAPPING_COMMANDS_S = 20_000.0
RSS_MIB = 60.0
REDIS_BYTES = 2.5 * 1024
LATENCY_RATE = 500.0
LATENCY_P50_MS = 20.0
WEB_LABELS = {
    "a": "(a) Starlette+HMAC+parse",
    "b": "(b) (a) + arq enqueue_job",
    "serve": "leadbridge serve",
    # `serve` answering 202 at once, storing nothing (bench/lb_patched.py `nostore`): the ceiling
    # of its HTTP path, which no store could take it past. Context for the p99 target.
    "nostore": "leadbridge serve, storing skipped",
}


@dataclass(frozen=True)
class Durations:
    """Seconds (or counts) per measurement; --quick shortens them all."""

    warmup_s: int
    sweep_s: int
    main_s: int  # the 64-connection ingest points
    drain_n: int  # deliveries pre-filled for the worker measurements
    drain_slow_n: int  # the same with 100 ms upstream latency
    naive_slow_n: int
    saturated_s: int
    sustained_s: int
    latency_s: int
    settle_s: float  # longest wait for a fixed-rate run's deliveries after its load ends
    mapping_s: float
    clients_s: float
    budget_s: int  # the whole run is stopped after this

    @classmethod
    def pick(cls, quick: bool) -> Durations:
        if quick:
            return cls(1, 3, 5, 3000, 1500, 200, 8, 30, 8, 8.0, 1.5, 1.0, 480)
        return cls(2, 5, 10, 8000, 4000, 300, 15, 60, 15, 15.0, 3.0, 2.0, 840)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rss: dict[str, float | None] = field(default_factory=dict)
    uss: dict[str, float | None] = field(default_factory=dict)


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def _best(points: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The round with the highest req/s (see `Scenarios.ingest`)."""
    return max(points, key=lambda p: p["req_per_s"])


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _per(cpu_pct: float | None, rate: float | None, unit: float) -> float | None:
    """CPU time per request or lead (cpu_pct of one core at `rate` per second), in 1/unit s: the
    figure that holds when neighbours take CPU away, unlike the rate itself."""
    if not cpu_pct or not rate:
        return None
    return round(cpu_pct / 100 / rate * unit, 1)


class Scenarios:
    def __init__(self, harness: Harness, durations: Durations) -> None:
        self.h = harness
        self.d = durations
        self.results = Results()

    STEPS = ("mapping", "clients", "ingest", "delivery", "whole")

    async def run(self, steps: list[str]) -> None:
        """The named measurements, in the order of STEPS; memory rows from what was measured."""
        for name in self.STEPS:
            if name in steps:
                step: Callable[[], Awaitable[None]] = getattr(self, name)
                await step()
        self.memory()

    # -- mapping --------------------------------------------------------------------------------

    async def mapping(self) -> None:
        log("mapping throughput (CompiledMapping.plan, in process, one core)")
        argv = [self.h.python, "-m", "bench.mapping_bench", "--seconds", str(self.d.mapping_s), "--json"]
        out = await asyncio.to_thread(
            subprocess.run, argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
        )
        results = orjson.loads(out.stdout.strip().splitlines()[-1])
        self.results.details["mapping"] = results
        for item in results:
            name = f"mapping {item['mapping']}"
            if "error" in item:
                self.results.rows.append(Row(name, None, "commands/s", result="FAIL", note=item["error"]))
                continue
            value = float(item["commands_per_s"])
            self.results.rows.append(
                Row(
                    name,
                    value,
                    "commands/s",
                    target=f">= {MAPPING_COMMANDS_S:,.0f}/s",
                    result=_verdict(value >= MAPPING_COMMANDS_S),
                    note=f"{item['us_per_command']} us/command; with the worker's reparse of the body: "
                    f"{item['commands_per_s_with_reparse']:,}/s",
                )
            )

    # -- HTTP client micro-benchmark -------------------------------------------------------------

    async def clients(self) -> None:
        log("HTTP clients: httpx vs httpx-aiohttp vs aiohttp, 1 and 100 in flight")
        port = free_port()
        argv = [self.h.python, "-m", "bench.baselines", "instant", "--port", str(port)]
        self.h.procs.start("instant", argv, cwd=ROOT)
        try:
            await self.h.wait_http("instant", f"http://127.0.0.1:{port}/")
            argv = [self.h.python, "-m", "bench.http_clients", "--json", "--seconds", str(self.d.clients_s)]
            argv += ["--url", f"http://127.0.0.1:{port}/connect/table_entries"]
            out = await asyncio.to_thread(
                subprocess.run, argv, cwd=ROOT, capture_output=True, text=True, timeout=180, check=True
            )
        finally:
            self.h.procs.stop("instant")
        results = orjson.loads(out.stdout.strip().splitlines()[-1])
        self.results.details["http_clients"] = results
        for item in results:
            log(f"  {item}")

    # -- ingest ---------------------------------------------------------------------------------

    async def ingest(self) -> None:
        """Each server through the sweep (1, 8, 64, 256 connections), then INGEST_ROUNDS - 1 more
        rounds at 64 connections taken in turns (a, b, serve, a, b, serve): each server's
        64-connection figure is its best round. A neighbour's burst of CPU on this shared
        machine (a third of a run's throughput, at times) then has to hit every round of one
        server to bias the ratios, and all servers are treated alike."""
        urls: dict[str, str] = {}
        try:
            for kind, label in WEB_LABELS.items():
                log(f"ingest: {label}")
                urls[kind] = await self.h.start_web(kind)
                await self._redis_of(kind).flushall()
                await self.h.wrk(urls[kind], 64, self.d.warmup_s, f"w{kind}")
                points = [await self._ingest_point(kind, urls[kind], c) for c in SWEEP]
                self.results.sweep[label] = points
            for round_ in range(2, INGEST_ROUNDS + 1):
                log(f"ingest: round {round_} of {INGEST_ROUNDS} at 64 connections, servers in turn")
                for kind, label in WEB_LABELS.items():
                    point = await self._ingest_point(kind, urls[kind], 64)
                    self.results.sweep[label].append({**point, "round": round_})
            for kind in ("a", "serve"):
                log(f"ingest: {WEB_LABELS[kind]} at fixed rates (open loop, 64 connections)")
                points = [await self._open_loop_point(kind, urls[kind], rate) for rate in OPEN_LOOP_RATES]
                self.results.details.setdefault("ingest_open_loop", {})[WEB_LABELS[kind]] = points
        finally:
            for kind in urls:
                self.h.procs.stop(self._web_name(kind))
        for kind, label in WEB_LABELS.items():
            await self._redis_of(kind).flushall()
            # Memory at the first 64-connection round: the later rounds come after 256 connections,
            # whose buffers a process keeps (RSS seldom shrinks).
            first64 = next(p for p in self.results.sweep[label] if p["connections"] == 64)
            self.results.rss[kind], self.results.uss[kind] = first64["rss_mib"], first64["uss_mib"]
        self.results.details["ingest_sweep"] = self.results.sweep
        self._ingest_rows()

    @staticmethod
    def _web_name(kind: str) -> str:
        return f"web-{kind}" if kind in ("a", "b") else kind

    def _redis_of(self, kind: str) -> Any:
        return self.h.lb_redis if kind == "serve" else self.h.base_redis

    async def _ingest_point(self, kind: str, url: str, connections: int) -> dict[str, Any]:
        name = self._web_name(kind)
        redis = self._redis_of(kind)
        valkey_pid = self.h.lb_valkey_pid if kind == "serve" else self.h.base_valkey_pid
        await self.h.clean_slate(redis)
        await self.h.reset_command_stats(redis)
        await self.h.reset_stalls(redis)
        seconds = self.d.main_s if connections == 64 else self.d.sweep_s
        pids = {name: self.h.procs.pid(name), "valkey": valkey_pid}
        with RssSampler(self.h.procs.pid(name)) as rss, CpuMeter(pids) as cpu:
            point = await self.h.wrk(url, connections, seconds, f"i{kind}")
        point["rss_mib"] = rss.peak
        point["uss_mib"] = rss.peak_uss
        point["cpu_pct"] = cpu.result
        point["cpu_us_per_request"] = _per(cpu.result.get(name), point["req_per_s"], 1e6)
        if kind in ("b", "serve"):
            point["redis_commands_per_request"] = await self.h.command_stats(redis, point["ok"])
            point["valkey_stalls_ms"] = await self.h.stalls(redis)
        if kind == "serve":  # every 2xx must be a NEW stored delivery, not a duplicate
            point["queued"] = int(await redis.zcard(QUEUE_KEY))
            if point["queued"] < point["ok"]:
                point["warning"] = "fewer deliveries queued than 2xx answers"
        log(
            f"  {name} c={connections}: {point['req_per_s']:,.0f} req/s, p50 {point['p50_ms']:.2f} ms, "
            f"p99 {point['p99_ms']:.2f} ms, cpu {cpu.result}"
        )
        return point

    async def _open_loop_point(self, kind: str, url: str, rate: int) -> dict[str, Any]:
        """bench/loadgen.py at `rate` for main_s: latency from when each request was due, so a
        server that falls behind shows it (wrk's closed loop would slow down with it instead)."""
        redis = self._redis_of(kind)
        await self.h.clean_slate(redis)
        await self.h.reset_stalls(redis)
        load = await self.h.loadgen(url, rate, self.d.main_s, f"o{kind}")
        point = {
            "rate": rate,
            "scheduled": load["scheduled"],
            "answered": load["completed"],
            "statuses": load["statuses"],
            "dispatch_lag_s": load["dispatch_lag_s"],
            "p50_ms": rounded(load["latency_ms"]["p50"]),
            "p99_ms": rounded(load["latency_ms"]["p99"]),
            "max_ms": rounded(load["latency_ms"]["max"]),
            "valkey_stalls_ms": await self.h.stalls(redis) if kind == "serve" else {},
        }
        log(f"  {self._web_name(kind)} at {rate:,}/s: {point}")
        return point

    def _ingest_rows(self) -> None:
        at64 = {k: _best(p for p in pts if p["connections"] == 64) for k, pts in self.results.sweep.items()}
        a, b, lb = (at64[WEB_LABELS[k]] for k in ("a", "b", "serve"))
        rss = self.results.rss
        rows = self.results.rows
        for kind, point in (("a", a), ("b", b)):
            rows.append(
                Row(
                    f"ingest {WEB_LABELS[kind]}, c=64",
                    point["req_per_s"],
                    "req/s",
                    point["p50_ms"],
                    point["p99_ms"],
                    rss[kind],
                    note=f"server CPU {point['cpu_us_per_request']} us/request; cpu % {point['cpu_pct']}",
                )
            )
        ratio = lb["req_per_s"] / a["req_per_s"]
        cpu_ratio = _ratio(a["cpu_us_per_request"], lb["cpu_us_per_request"]) or 0.0
        rows.append(
            Row(
                "ingest leadbridge serve, c=64",
                lb["req_per_s"],
                "req/s",
                lb["p50_ms"],
                lb["p99_ms"],
                rss["serve"],
                "(a)",
                a["req_per_s"],
                ratio,
                f">= {INGEST_RATIO:.2f}x (a), p99 <= {INGEST_P99_MS:.0f} ms",
                _verdict(ratio >= INGEST_RATIO and lb["p99_ms"] <= INGEST_P99_MS and "warning" not in lb),
                note=f"{lb['queued']:,} new deliveries stored for {lb['ok']:,} 2xx answers; server CPU "
                f"{lb['cpu_us_per_request']} us/request (CPU ratio to (a): {cpu_ratio:.2f}x); "
                f"cpu % {lb['cpu_pct']}; p90 {lb['p90_ms']} ms, max {lb['max_ms']} ms; Valkey stalls "
                f"(longest, ms) {lb['valkey_stalls_ms']}",
            )
        )
        rows.append(
            Row(
                "ingest leadbridge serve vs (b), c=64",
                lb["req_per_s"],
                "req/s",
                baseline="(b)",
                baseline_value=b["req_per_s"],
                ratio=lb["req_per_s"] / b["req_per_s"],
                target="(issue: ~3x)",
            )
        )
        self._open_loop_rows()
        nostore = at64[WEB_LABELS["nostore"]]
        rows.append(
            Row(
                f"ingest {WEB_LABELS['nostore']}, c=64",
                nostore["req_per_s"],
                "req/s",
                nostore["p50_ms"],
                nostore["p99_ms"],
                None,  # bench.lb_patched imports more than `serve` does: its RSS says nothing
                "(a)",
                a["req_per_s"],
                nostore["req_per_s"] / a["req_per_s"],
                "(context: no store)",
                note=f"serve answering 202 at once and storing nothing (bench/lb_patched.py nostore): "
                f"server CPU {nostore['cpu_us_per_request']} us/request; cpu % {nostore['cpu_pct']}",
            )
        )

    def _open_loop_rows(self) -> None:
        runs = self.results.details.get("ingest_open_loop", {})
        served, bare = runs.get(WEB_LABELS["serve"], []), runs.get(WEB_LABELS["a"], [])
        for point, base in zip(served, bare, strict=True):
            ok = point["statuses"].get("202", 0)
            warning = "" if ok == point["scheduled"] else f"; only {ok:,} of {point['scheduled']:,} got 202"
            self.results.rows.append(
                Row(
                    f"ingest leadbridge serve, {point['rate']:,}/s (open loop)",
                    point["rate"],
                    "webhooks/s",
                    point["p50_ms"],
                    point["p99_ms"],
                    baseline="(a) same rate",
                    baseline_value=base["p99_ms"],
                    target="(context: p99, ms)",
                    note=f"fixed rate, latency from when each request was due; max {point['max_ms']} ms; "
                    f"Valkey stalls (longest, ms) {point['valkey_stalls_ms']}; (a) at the same rate: "
                    f"p50 {base['p50_ms']} ms, p99 {base['p99_ms']} ms{warning}",
                )
            )

    # -- delivery -------------------------------------------------------------------------------

    async def delivery(self) -> None:
        details: dict[str, Any] = {}
        h = self.h
        for latency_ms, count in ((0.0, self.d.drain_n), (100.0, self.d.naive_slow_n)):
            log(f"delivery: (c) naive arq+httpx worker, {count} jobs, upstream latency {latency_ms:.0f} ms")
            await h.base_redis.flushall()
            await h.prefill_naive(count)
            await h.sandbox_reset(latency_ms)
            await h.reset_command_stats(h.base_redis)
            h.start_naive_worker()
            try:
                result = await h.drain("worker-c", count, 30 + count / 20, h.base_valkey_pid)
                result["redis_commands_per_job"] = await h.command_stats(h.base_redis, count)
            finally:
                h.procs.stop("worker-c")
            result["cpu_ms_per_lead"] = _per(result["cpu_pct"].get("worker-c"), result["leads_per_s"], 1e3)
            details[f"naive_{latency_ms:.0f}ms"] = result
            log(f"  {_brief(result)}")
        for latency_ms, count in ((0.0, self.d.drain_n), (100.0, self.d.drain_slow_n)):
            log(f"delivery: leadbridge worker, {count} deliveries, upstream latency {latency_ms:.0f} ms")
            bytes_each = await h.prefill_leadbridge(count)
            if latency_ms == 0.0:
                details["redis_bytes_per_delivery"] = round(bytes_each, 1)
            await h.sandbox_reset(latency_ms)
            details[f"leadbridge_{latency_ms:.0f}ms"] = await self._lb_drain(count, update=False)
            if latency_ms == 0.0:
                # The same records' next events: every delivery a patch of the entry just created.
                log(f"delivery: leadbridge worker, {count} updates of those records, upstream latency 0 ms")
                await h.prefill_leadbridge(count, update=True)
                await h.sandbox_reset(keep_entries=True)
                details["leadbridge_updates_0ms"] = await self._lb_drain(count, update=True)
        await h.sandbox_reset()
        self.results.details["delivery"] = details
        self._delivery_rows(details)

    async def _lb_drain(self, count: int, *, update: bool) -> dict[str, Any]:
        """One `leadbridge worker` draining the `count` deliveries pre-filled (creates, or with
        `update` patches)."""
        h = self.h
        await h.reset_command_stats(h.lb_redis)
        await h.start_lb_worker()
        try:
            result = await h.drain("worker", count, 30 + count / 20, h.lb_valkey_pid, patches=update)
            result["redis_commands_per_delivery"] = await h.command_stats(h.lb_redis, count)
            result["queue_left"] = int(await h.lb_redis.zcard(QUEUE_KEY))
            result["dead_lettered"] = int(await h.lb_redis.zcard(DLQ_KEY))
        finally:
            h.procs.stop("worker")
        result["cpu_ms_per_lead"] = _per(result["cpu_pct"].get("worker"), result["leads_per_s"], 1e3)
        log(f"  {_brief(result)}")
        return result

    def _delivery_rows(self, details: dict[str, Any]) -> None:
        naive, lb = details["naive_0ms"], details["leadbridge_0ms"]
        naive_slow, lb_slow = details["naive_100ms"], details["leadbridge_100ms"]
        rows = self.results.rows
        rows.append(
            Row(
                "delivery (c) naive arq+httpx worker",
                naive["leads_per_s"],
                "leads/s",
                rss_mib=naive["rss_mib"],
            )
        )
        ratio = _ratio(lb["leads_per_s"], naive["leads_per_s"])
        cpu_ratio = _ratio(naive["cpu_ms_per_lead"], lb["cpu_ms_per_lead"]) or 0.0
        complete = lb["complete"] and lb["dead_lettered"] == 0
        rows.append(
            Row(
                "delivery leadbridge worker, 0 ms upstream",
                lb["leads_per_s"],
                "leads/s",
                rss_mib=lb["rss_mib"],
                baseline="(c)",
                baseline_value=naive["leads_per_s"],
                ratio=ratio,
                target=f">= {DELIVERY_RATIO:.1f}x (c)",
                result=_verdict(complete and ratio is not None and ratio >= DELIVERY_RATIO),
                note=f"worker CPU {lb['cpu_ms_per_lead']} ms/lead vs (c) {naive['cpu_ms_per_lead']} ms/job "
                f"(CPU ratio {cpu_ratio:.2f}x); Redis commands "
                f"per delivery {lb['redis_commands_per_delivery']['_total']} vs per job "
                f"{naive['redis_commands_per_job']['_total']}; cpu % {lb['cpu_pct']}",
            )
        )
        updates = details.get("leadbridge_updates_0ms")
        if updates is not None:
            rows.append(
                Row(
                    "delivery leadbridge worker, updates, 0 ms upstream",
                    updates["leads_per_s"],
                    "leads/s",
                    rss_mib=updates["rss_mib"],
                    baseline="(c)",
                    baseline_value=naive["leads_per_s"],
                    ratio=_ratio(updates["leads_per_s"], naive["leads_per_s"]),
                    target="(context: patches)",
                    result="info" if updates["complete"] and updates["dead_lettered"] == 0 else "FAIL",
                    note=f"the records of the 0 ms row, each patched once: worker CPU "
                    f"{updates['cpu_ms_per_lead']} ms/lead; Redis commands per delivery "
                    f"{updates['redis_commands_per_delivery']['_total']}; cpu % {updates['cpu_pct']}",
                )
            )
        value = lb_slow["leads_per_s"]
        rows.append(
            Row(
                "delivery leadbridge worker, 100 ms upstream",
                value,
                "leads/s",
                rss_mib=lb_slow["rss_mib"],
                baseline="(c) at 100 ms",
                baseline_value=naive_slow["leads_per_s"],
                ratio=_ratio(value, naive_slow["leads_per_s"]),
                target=f">= {DELIVERY_100MS_LEADS_S:.0f} leads/s",
                result=_verdict(
                    lb_slow["complete"] and value is not None and value >= DELIVERY_100MS_LEADS_S
                ),
            )
        )
        self.results.rss["worker"] = lb["rss_mib"]
        self.results.rss["c"] = naive["rss_mib"]
        self.results.uss["worker"] = lb["uss_mib"]
        self.results.uss["c"] = naive["uss_mib"]
        # Against a slow upstream every slot holds a delivery (BRIDGE_WORKER_CONCURRENCY, 100):
        # the worker's fullest steady state, judged too.
        self.results.rss["worker_100ms"] = lb_slow["rss_mib"]
        self.results.rss["c_100ms"] = naive_slow["rss_mib"]
        self.results.uss["worker_100ms"] = lb_slow["uss_mib"]
        self.results.uss["c_100ms"] = naive_slow["uss_mib"]

    # -- the whole service ----------------------------------------------------------------------

    async def whole(self) -> None:
        details: dict[str, Any] = {}
        log("whole service: naive pipeline (b)+(c), saturated (wrk, 64 connections)")
        details["naive_saturated"] = await self._with_naive(lambda url: self.saturated(url, naive=True))
        log(f"  {details['naive_saturated']}")
        log(f"whole service: naive pipeline at {LATENCY_RATE:.0f}/s (202-to-upstream latency)")
        details["naive_latency"] = await self._with_naive(
            lambda url: self.fixed_rate(url, LATENCY_RATE, self.d.latency_s, "nl", naive=True)
        )
        log(f"  {_brief(details['naive_latency'])}")
        naive_rate = float(details["naive_saturated"]["delivered_per_s"])
        log("whole service: leadbridge run, saturated (wrk, 64 connections)")
        details["leadbridge_saturated"] = await self._with_run(lambda url: self.saturated(url, naive=False))
        log(f"  {details['leadbridge_saturated']}")
        rate = round(max(WHOLE_RATIO * naive_rate, 20.0))
        log(f"whole service: leadbridge run, {self.d.sustained_s} s at {rate}/s (2x the naive pipeline)")
        details["leadbridge_sustained"] = await self._with_run(
            lambda url: self.fixed_rate(url, rate, self.d.sustained_s, "ls", naive=False)
        )
        log(f"  {_brief(details['leadbridge_sustained'])}")
        log(f"whole service: leadbridge run at {LATENCY_RATE:.0f}/s (202-to-upstream latency)")
        details["leadbridge_latency"] = await self._with_run(
            lambda url: self.fixed_rate(url, LATENCY_RATE, self.d.latency_s, "ll", naive=False)
        )
        log(f"  {_brief(details['leadbridge_latency'])}")
        self.results.details["whole_service"] = details
        self._whole_rows(details, naive_rate, rate)

    async def _with_naive(self, body: Callable[[str], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        await self.h.base_redis.flushall()
        await self.h.sandbox_reset()
        self.h.start_naive_worker()
        try:
            url = await self.h.start_web("b")
            pids: dict[str, int | None] = {"web-b": self.h.procs.pid("web-b")}
            pids["worker-c"] = self.h.procs.pid("worker-c")
            pids |= {"sandbox": self.h.procs.pid("sandbox"), "valkey": self.h.base_valkey_pid}
            with CpuMeter(pids) as cpu:
                result = await body(url)
            result["cpu_pct"] = cpu.result
            return result
        finally:
            self.h.procs.stop("web-b")
            self.h.procs.stop("worker-c")

    async def _with_run(self, body: Callable[[str], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        await self.h.lb_redis.flushall()
        await self.h.sandbox_reset()
        url = await self.h.start_web("run")
        try:
            pids: dict[str, int | None] = {
                "run": self.h.procs.pid("run"),
                "sandbox": self.h.procs.pid("sandbox"),
            }
            pids["valkey"] = self.h.lb_valkey_pid
            with RssSampler(self.h.procs.pid("run")) as rss, CpuMeter(pids) as cpu:
                result = await body(url)
            result["rss_mib"] = rss.peak
            result["cpu_pct"] = cpu.result
            return result
        finally:
            self.h.procs.stop("run")

    def _redis(self, naive: bool) -> Any:
        return self.h.base_redis if naive else self.h.lb_redis

    async def saturated(self, url: str, *, naive: bool) -> dict[str, Any]:
        """wrk at full speed: how many leads/s reach the upstream while webhooks pour in."""
        point = await self.h.wrk(url, 64, self.d.saturated_s, "sd" if naive else "sl")
        delivered = await self.h.sandbox_creates()
        return {
            "accepted_per_s": point["req_per_s"],
            "delivered": delivered,
            "delivered_per_s": round(delivered / point["seconds"], 1),
            "backlog_at_end": int(await self._redis(naive).zcard(QUEUE_KEY)),
            "p99_ms": point["p99_ms"],
            "seconds": point["seconds"],
        }

    async def fixed_rate(
        self, url: str, rate: float, seconds: int, label: str, *, naive: bool
    ) -> dict[str, Any]:
        """bench/loadgen.py at `rate`; the queue depth every second; then, after up to settle_s,
        accepted vs delivered and the 202-to-upstream latency of every delivered event."""
        redis = self._redis(naive)
        depths: list[int] = []

        async def watch() -> None:
            while True:
                depths.append(int(await redis.zcard(QUEUE_KEY)))
                await asyncio.sleep(1.0)

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            load = await self.h.loadgen(url, rate, seconds, label)
        finally:
            watcher.cancel()
        backlog_end = int(await redis.zcard(QUEUE_KEY))
        delivered_at_end = await self.h.sandbox_creates()
        accepted = {r[0]: r[2] for r in load["records"] if r[3] == 202}
        ended = time.time()

        async def caught_up() -> bool:
            return await self.h.sandbox_creates() >= len(accepted)

        drained = await self.h.until(caught_up, self.d.settle_s, interval_s=0.25)
        arrivals = await self.h.sandbox_arrivals()
        lags = [(arrivals[i] - t) * 1000 for i, t in accepted.items() if i in arrivals]
        half = len(depths) // 2
        return {
            "rate": rate,
            "seconds": seconds,
            "scheduled": load["scheduled"],
            "answered": load["completed"],
            "accepted_202": len(accepted),
            "statuses": load["statuses"],
            "http_p50_ms": rounded(load["latency_ms"]["p50"]),
            "http_p99_ms": rounded(load["latency_ms"]["p99"]),
            "backlog_at_end": backlog_end,
            "backlog_max": max(depths, default=0),
            "backlog_first_half_mean": rounded(sum(depths[:half]) / half if half else None),
            "backlog_second_half_mean": rounded(sum(depths[half:]) / max(1, len(depths) - half)),
            "delivered_at_end_of_load": delivered_at_end,
            "delivered": len(lags),
            "drained": drained,
            "settle_s": round(time.time() - ended, 2),
            "dead_lettered": 0 if naive else int(await redis.zcard(DLQ_KEY)),
            "lag_p50_ms": rounded(percentile(lags, 50)),
            "lag_p90_ms": rounded(percentile(lags, 90)),
            "lag_p99_ms": rounded(percentile(lags, 99)),
        }

    def _whole_rows(self, details: dict[str, Any], naive_rate: float, rate: float) -> None:
        rows = self.results.rows
        naive_sat, lb_sat = details["naive_saturated"], details["leadbridge_saturated"]
        sus, lat = details["leadbridge_sustained"], details["leadbridge_latency"]
        naive_lat = details["naive_latency"]
        rows.append(
            Row(
                "whole (d) naive (b)+(c), saturated: delivered",
                naive_sat["delivered_per_s"],
                "leads/s",
                note=f"accepted {naive_sat['accepted_per_s']:,.0f}/s, "
                f"backlog {naive_sat['backlog_at_end']:,}",
            )
        )
        rows.append(
            Row(
                "whole leadbridge run, saturated: delivered",
                lb_sat["delivered_per_s"],
                "leads/s",
                rss_mib=lb_sat["rss_mib"],
                baseline="(d)",
                baseline_value=naive_sat["delivered_per_s"],
                ratio=_ratio(lb_sat["delivered_per_s"], naive_sat["delivered_per_s"]),
                note=f"accepted {lb_sat['accepted_per_s']:,.0f}/s, backlog {lb_sat['backlog_at_end']:,}",
            )
        )
        keeps_up = (
            sus["accepted_202"] == sus["scheduled"]
            and sus["drained"]
            and sus["dead_lettered"] == 0
            and sus["backlog_at_end"] <= max(100.0, rate)
        )
        rows.append(
            Row(
                f"whole leadbridge run, {self.d.sustained_s} s at a fixed rate",
                float(rate),
                "webhooks/s",
                sus["lag_p50_ms"],
                sus["lag_p99_ms"],
                sus["rss_mib"],
                "(d)",
                naive_rate,
                _ratio(rate, naive_rate),
                f">= {WHOLE_RATIO:.0f}x (d), accepted = delivered",
                _verdict(keeps_up),
                note=f"accepted {sus['accepted_202']:,}/{sus['scheduled']:,}, delivered {sus['delivered']:,} "
                f"(at the end of the load: {sus['delivered_at_end_of_load']:,}), backlog at the end "
                f"{sus['backlog_at_end']:,} (max {sus['backlog_max']:,})",
            )
        )
        ok = lat["lag_p50_ms"] is not None and lat["lag_p50_ms"] <= LATENCY_P50_MS and lat["drained"]
        rows.append(
            Row(
                f"latency 202-to-upstream at {LATENCY_RATE:.0f}/s",
                lat["lag_p50_ms"],
                "ms (p50)",
                lat["lag_p50_ms"],
                lat["lag_p99_ms"],
                lat["rss_mib"],
                "(d) at 500/s",
                naive_lat["lag_p50_ms"],
                None,
                f"p50 <= {LATENCY_P50_MS:.0f} ms",
                _verdict(ok),
                note=f"leadbridge delivered {lat['delivered']:,}/{lat['accepted_202']:,}; "
                f"naive delivered {naive_lat['delivered']:,}/{naive_lat['accepted_202']:,}",
            )
        )

    # -- memory ---------------------------------------------------------------------------------

    def _ran_as(self, kind: str) -> str:
        """How the worker ran: `python -OO -P -m bridge worker` once it replaced itself."""
        runs = {"worker": "leadbridge_0ms", "worker_100ms": "leadbridge_100ms"}
        run = self.results.details.get("delivery", {}).get(runs.get(kind, ""), {})
        command = run.get("command")
        return f"; ran as `{' '.join(['python', *command[1:]])}`" if command else ""

    def memory(self) -> None:
        rows = self.results.rows
        rss = self.results.rss
        for kind, label, base, base_label in (
            ("serve", "memory: leadbridge serve RSS (peak at c=64)", "b", "(b)"),
            ("worker", "memory: leadbridge worker RSS (peak, draining)", "c", "(c)"),
            ("worker_100ms", "memory: leadbridge worker RSS (peak, 100 ms upstream)", "c_100ms", "(c)"),
        ):
            value = rss.get(kind)
            if kind not in rss:
                continue
            rows.append(
                Row(
                    label,
                    value,
                    "MiB",
                    baseline=base_label,
                    baseline_value=rss.get(base),
                    target=f"<= {RSS_MIB:.0f} MiB",
                    result=_verdict(value is not None and value <= RSS_MIB),
                    note=f"USS (memory not shared with other processes) {self.results.uss.get(kind)} MiB, "
                    f"baseline {self.results.uss.get(base)} MiB" + self._ran_as(kind),
                )
            )
        if "delivery" not in self.results.details:
            return
        per = self.results.details["delivery"]["redis_bytes_per_delivery"]
        rows.append(
            Row(
                "memory: Redis bytes per queued delivery",
                per,
                "bytes",
                target=f"<= {REDIS_BYTES:,.0f} B",
                result=_verdict(per <= REDIS_BYTES),
                note=f"INFO used_memory delta / N after storing N with no worker; body "
                f"{len(self.h.template.read_bytes()):,} B",
            )
        )


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its bulky parts, for the progress log."""
    return {k: v for k, v in result.items() if not k.startswith(("statuses", "redis_commands"))}
