"""Prometheus metrics, one `Metrics` object per process (its own CollectorRegistry; no globals).

Labels are bounded: mapping names (from the loaded mapping files), fixed outcome words, HTTP
methods and status codes. Never a payload value. leadbridge runs one uvicorn worker per process
(scale with processes/pods), so prometheus-client's multiprocess mode is not needed.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks = Counter(
            "leadbridge_webhooks",
            "Webhooks received, by mapping and outcome",
            ["mapping", "outcome"],
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "leadbridge_ingest_seconds",
            "Time to verify, dedupe and durably enqueue one webhook",
            ["mapping"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.commands = Counter(
            "leadbridge_commands",
            "Lead commands, by mapping, action and outcome",
            ["mapping", "action", "outcome"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "leadbridge_upstream_request_seconds",
            "Connect API call latency, by method and status",
            ["method", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge("leadbridge_queue_depth", "Deliveries waiting in the queue", registry=r)
        self.queue_oldest_age = Gauge(
            "leadbridge_queue_oldest_age_seconds", "Age of the oldest delivery due in the queue", registry=r
        )
        self.dlq_size = Gauge("leadbridge_dlq_size", "Deliveries in the dead-letter queue", registry=r)
        # Exported only by a process that runs a worker (`serve_worker`): every other gauge is read
        # from the shared queue by any process, so this one is what tells a worker was scraped
        # (the alert LeadbridgeWorkerMetricsAbsent is `absent()` of it).
        self.jobs_in_flight = Gauge(
            "leadbridge_worker_jobs_in_flight", "Deliveries being processed by this worker", registry=None
        )
        self.worker_heartbeat = Gauge(
            "leadbridge_worker_heartbeat_timestamp_seconds",
            "Unix time of the most recent worker heartbeat seen",
            registry=r,
        )
        self.circuit_open = Gauge(
            "leadbridge_circuit_open", "1 while the shared upstream circuit breaker is open", registry=r
        )
        # The gauges above are read from the queue at each scrape: when it does not answer they
        # keep their last values, and this says so (0). The web pods leave the Service then
        # (readiness), so the ingress answers the webhooks, and no webhook counter moves.
        self.queue_up = Gauge(
            "leadbridge_queue_up", "1 when the queue (Redis) answered this scrape's reads, else 0", registry=r
        )
        self.signature_failures = Counter(
            "leadbridge_signature_failures", "Webhooks refused with 401, by mapping", ["mapping"], registry=r
        )

        # Labelled children by (metric, label values): `labels()` validates and locks on every
        # call, a cost per webhook and per upstream call; the label sets are few and bounded.
        self._children: dict[tuple[Any, ...], Any] = {}
        self._worker = False

    def serve_worker(self) -> None:
        """This process runs a worker: export the worker's own series."""
        if not self._worker:
            self.registry.register(self.jobs_in_flight)
            self._worker = True

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def count_webhook(self, mapping: str, outcome: str) -> None:
        self._child(self.webhooks, mapping, outcome).inc()

    def observe_ingest(self, mapping: str, seconds: float) -> None:
        self._child(self.ingest_seconds, mapping).observe(seconds)

    def count_command(self, mapping: str, action: str, outcome: str) -> None:
        self._child(self.commands, mapping, action, outcome).inc()

    def observe_upstream(self, method: str, status: str, seconds: float) -> None:
        self._child(self.upstream_seconds, method, status).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
