"""Metrics and alerts as they behave in the processes leadbridge really runs (web, worker)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.pipeline import pipeline, sign

RULES = Path(__file__).resolve().parent.parent / "k8s/components/monitoring/prometheusrule.yaml"


def _alert_expr(name: str) -> str:
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return str(rule["expr"])
    raise AssertionError(f"no alert {name}")


def _exports(page: str, metric: str) -> bool:
    return any(re.match(rf"{re.escape(metric)}(\{{| )", line) for line in page.splitlines())


async def test_worker_metrics_absent_alert_fires_when_only_the_web_is_scraped(
    redis_url: str, tmp_path: Path
) -> None:
    """LeadbridgeWorkerMetricsAbsent (`absent(X)`) must see the workers' scrapes only: if the web
    exports X too, the alert can never fire while the web is scraped (a worker port Prometheus
    cannot reach, or no worker at all, goes unnoticed)."""
    (metric,) = re.findall(r"absent\(\s*([a-zA-Z_:][\w:]*)", _alert_expr("LeadbridgeWorkerMetricsAbsent"))
    async with pipeline(redis_url, tmp_path / "web", worker=True) as with_worker:
        worker_page = (await with_worker.http.get(f"{with_worker.url}/metrics")).text
    assert _exports(worker_page, metric), "a worker must export it, or the alert always fires"
    async with pipeline(redis_url, tmp_path / "web-only", worker=False) as web_only:
        web_page = (await web_only.http.get(f"{web_only.url}/metrics")).text
    assert not _exports(web_page, metric), f"the web exports {metric}: absent() never fires"


FILL = """
for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'lb:d:filler' .. i, 'x') end
return 1
"""


def _scan_calls(info: dict[str, object]) -> int:
    stats = info.get("cmdstat_scan")
    return int(stats["calls"]) if isinstance(stats, dict) else 0


async def test_readyz_and_metrics_cost_no_keyspace_scan(redis_url: str, tmp_path: Path) -> None:
    """A week of deliveries is millions of keys (delivery, dedupe, done, arq job): /readyz (every
    5 s on each pod, 3 s timeout) and /metrics must not walk them all to find the heartbeats."""
    async with pipeline(redis_url, tmp_path / "mappings", worker=True) as pipe:
        await pipe.redis.eval(FILL, 0, 50_000)
        await pipe.redis.config_resetstat()
        ready = await pipe.http.get(f"{pipe.url}/readyz")
        page = (await pipe.http.get(f"{pipe.url}/metrics")).text
        calls = _scan_calls(await pipe.redis.info("commandstats"))
    assert ready.status_code == 200
    assert ready.json()["workers"] == 1
    (beat,) = [
        float(line.split()[1])
        for line in page.splitlines()
        if line.startswith("leadbridge_worker_heartbeat_timestamp_seconds ")
    ]
    assert beat > 0
    assert calls <= 2, f"{calls} SCAN round trips for one /readyz and one /metrics"


async def test_a_webhook_answered_500_is_counted(redis_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    """An unexpected error (a provider bug hit by a new payload shape) answers 500: providers
    retry and then give up, so those webhooks must show in leadbridge_webhooks_total too."""
    async with pipeline(redis_url, tmp_path / "mappings", worker=False) as pipe:
        provider = pipe.runtime.mappings.get("contact").provider

        def broken(*args: object, **kwargs: object) -> object:
            raise RuntimeError("a provider bug")

        monkeypatch.setattr(provider, "verify", broken)
        raw = orjson.dumps({"data": {"email": "x@example.com"}})
        answer = await pipe.post("contact", raw, sign(raw))
        page = (await pipe.http.get(f"{pipe.url}/metrics")).text
    assert answer.status_code == 500
    assert 'leadbridge_webhooks_total{mapping="contact",outcome="error"} 1.0' in page


async def test_the_run_banner_prints_no_redis_password(tmp_path: Path, capsys: Any) -> None:
    """`leadbridge run` prints where its queue and its upstream are; a REDIS_URL carries the store's
    password, and a CONNECT_BASE_URL may carry credentials of a proxy."""
    from bridge.processes import _print_banner
    from bridge.runtime import Runtime
    from tests.pipeline import CONTACT_MAPPING, SECRET, test_settings

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "contact.yaml").write_text(CONTACT_MAPPING)
    for url in (
        "redis://leadbridge:s3cret-pass@redis.internal:6379/0",
        "rediss://:s3cret-pass@redis.internal:6380",
        "redis://redis.internal:6379/0?password=s3cret-pass",
    ):
        settings = test_settings(tmp_path / "m", CONNECT_BASE_URL="https://proxy:s3cret-pass@connect.example")
        runtime = Runtime(settings, redis_url=url, environ={"CONTACT_SECRET": SECRET})
        try:
            runtime.load_mappings()
            _print_banner("http://127.0.0.1:8000", runtime, None)
        finally:
            await runtime.redis.aclose()
        err = capsys.readouterr().err
        assert "redis.internal" in err
        assert "connect.example" in err
        assert "s3cret-pass" not in err, err


def test_a_refused_redis_url_is_reported_without_its_password(monkeypatch: Any) -> None:
    """A REDIS_URL with a scheme leadbridge does not take (a Sentinel URL, a typo) stops the start
    with a message that ends up in the pod's log: it must not quote the password."""
    from bridge.errors import ConfigError
    from bridge.settings import load_settings

    for name, url, shown in (
        ("REDIS_URL", "redis+sentinel://:s3cret-pass@sentinel.internal:26379/mymaster", "redis+sentinel"),
        ("REDIS_URL", "s3cret-pass@redis.internal:6379", "no scheme"),  # the scheme forgotten
        ("REDIS_URL", "redis://:s3cret-pass@127.0.0.1:notaport/0", "port is not a number"),  # no traceback
        ("CONNECT_BASE_URL", "ftp://user:s3cret-pass@connect.example", "ftp"),
    ):
        monkeypatch.delenv("REDIS_URL", raising=False)
        monkeypatch.setenv(name, url)
        try:
            load_settings()
        except ConfigError as exc:
            message = str(exc)
        else:
            raise AssertionError(f"{url} was accepted")
        assert name in message
        assert shown in message
        assert "s3cret-pass" not in message, message


async def test_a_worker_whose_clock_runs_ahead_removes_no_other_workers_heartbeat(
    redis_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """Heartbeats are scored by each worker's own clock. Each heartbeat also pruned every entry
    older than its own clock minus 15 s: one worker's clock 60 s ahead (no NTP on its node)
    removed every other worker's live heartbeat at each beat (a key per worker with a TTL, as
    before, had no clock but the store's)."""
    import asyncio
    import time as real_time
    from types import SimpleNamespace

    import bridge.runtime as runtime_module
    from bridge.queue import keys
    from bridge.runtime import Runtime
    from tests.pipeline import CONTACT_MAPPING, SECRET, test_settings
    from tests.servers import until

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "contact.yaml").write_text(CONTACT_MAPPING)
    runtime = Runtime(test_settings(tmp_path / "m"), redis_url=redis_url, environ={"CONTACT_SECRET": SECRET})
    try:
        await runtime.redis.zadd(keys.HEARTBEATS, {"a-live-worker": real_time.time()})
        monkeypatch.setattr(runtime_module, "time", SimpleNamespace(time=lambda: real_time.time() + 60))
        beating = asyncio.create_task(runtime._heartbeat())
        try:
            await until(lambda: runtime.redis.zscore(keys.HEARTBEATS, runtime.worker_id))
        finally:
            beating.cancel()
        assert await runtime.redis.zscore(keys.HEARTBEATS, "a-live-worker") is not None
    finally:
        await runtime.redis.delete(keys.HEARTBEATS)
        await runtime.close()


async def test_a_worker_logs_its_start_and_its_stop(redis_url: str, tmp_path: Path, caplog: Any) -> None:
    """An operator reading a worker pod's log sees it start (with its concurrency) and stop."""
    import logging

    caplog.set_level(logging.INFO, logger="bridge.runtime")
    async with pipeline(redis_url, tmp_path / "mappings", worker=True) as pipe:
        await pipe.runtime.stop_worker()
    messages = [r.getMessage() for r in caplog.records if r.name == "bridge.runtime"]
    assert messages[:3] == ["worker started", "worker stopping", "worker stopped"]
    started = next(r for r in caplog.records if r.getMessage() == "worker started")
    assert started.concurrency == pipe.runtime.settings.worker_concurrency
