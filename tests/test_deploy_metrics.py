"""The metric catalogue that dashboards, alerts and autoscalers may query, read from the app itself.

`bridge.metrics.Metrics` defines every series leadbridge exports. The Grafana dashboard, the
PrometheusRule and the KEDA ScaledObject query them by name and label: a renamed metric or label
would silently empty a panel or mute an alert, so tests/test_deploy_grafana.py and
tests/test_deploy_k8s.py parse every PromQL expression (promql-parser) and check each selector
against this catalogue. This module also checks that the app exports what operations rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import promql_parser
import pytest
from prometheus_client.metrics import MetricWrapperBase

from bridge.metrics import Metrics

# What the dashboard, the alerts and the worker autoscaler are built on (issue 6, CONTRACT §5).
OPERATIONS_METRICS = {
    "leadbridge_webhooks_total": {"mapping", "outcome"},
    "leadbridge_ingest_seconds": set(),
    "leadbridge_commands_total": {"mapping", "action", "outcome"},
    "leadbridge_upstream_request_seconds": {"method", "status"},
    "leadbridge_queue_depth": set(),
    "leadbridge_queue_oldest_age_seconds": set(),
    "leadbridge_dlq_size": set(),
    "leadbridge_worker_jobs_in_flight": set(),
    "leadbridge_worker_heartbeat_timestamp_seconds": set(),
    "leadbridge_circuit_open": set(),
    "leadbridge_queue_up": set(),
}
# Labels Prometheus adds to every scraped series (kubernetes service discovery, the operator).
TARGET_LABELS = {"namespace", "pod", "service", "endpoint", "container", "job", "instance"}
SERIES_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
SERIES_LABELS = {"_bucket": {"le"}}
# Grafana's variables, replaced by a value of the right shape before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


@dataclass(frozen=True)
class Series:
    family: str  # the name the app registers (a counter's without _total)
    kind: str  # counter | gauge | histogram | summary
    labels: frozenset[str]


@cache
def exported_series() -> dict[str, Series]:
    """Every series name leadbridge can expose (counters with _total, histograms with _bucket ...)."""
    out: dict[str, Series] = {}
    for value in vars(Metrics()).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        (family,) = value.describe()
        labels = frozenset(getattr(value, "_labelnames", ()))
        suffixes = SERIES_SUFFIXES.get(family.type, ("",))
        for suffix in suffixes:
            extra = SERIES_LABELS.get(suffix, set())
            out[family.name + suffix] = Series(family.name, family.type, labels | extra)
    return out


def family_of(series: str) -> str:
    """The operations name of a series: the histogram's base name, a counter's _total name."""
    known = exported_series()[series]
    return known.family + "_total" if known.kind == "counter" else known.family


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str]


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in a PromQL expression; a syntax error fails the test."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    try:
        parsed = promql_parser.parse(expr)
    except ValueError as exc:
        pytest.fail(f"PromQL does not parse: {exc}\n{expr}")
    found: list[Selector] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            groups = [node.matchers.matchers, *node.matchers.or_matchers]
            labels = frozenset(m.name for group in groups for m in group)
            found.append(Selector(node.name or "", labels))
        return True

    promql_parser.walk(parsed, visit)
    return found


def check_expression(expr: str, where: str) -> set[str]:
    """Assert every selector names an exported series and only its labels; return the families."""
    families = set()
    found = selectors(expr)
    assert found, f"{where}: queries no metric: {expr}"
    exported = exported_series()
    for sel in found:
        assert sel.metric in exported, f"{where}: {sel.metric!r} is not a metric leadbridge exports"
        allowed = exported[sel.metric].labels | TARGET_LABELS
        unknown = sel.labels - allowed
        assert not unknown, f"{where}: {sel.metric} has no label(s) {sorted(unknown)}"
        families.add(family_of(sel.metric))
    return families


def test_the_app_exports_every_metric_operations_rely_on() -> None:
    exported = exported_series()
    for name, labels in OPERATIONS_METRICS.items():
        series = name if name in exported else name + "_bucket"
        assert series in exported, f"bridge.metrics does not export {name}"
        assert labels <= exported[series].labels, f"{name} lacks labels {labels - exported[series].labels}"
    assert exported["leadbridge_ingest_seconds_bucket"].kind == "histogram"
    assert exported["leadbridge_upstream_request_seconds_bucket"].kind == "histogram"


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(rate(leadbridge_webhooks_total[5m])", "does not parse"),
        ("sum(rate(leadbridge_webhook_total[5m]))", "not a metric"),
        ('sum(rate(leadbridge_upstream_request_seconds_count{code="500"}[5m]))', "no label"),
        ("time()", "queries no metric"),
    ],
)
def test_expression_check_catches_mistakes(expr: str, problem: str) -> None:
    with pytest.raises(pytest.fail.Exception if problem == "does not parse" else AssertionError) as info:
        check_expression(expr, "example")
    assert problem in str(info.value)


def test_expression_check_accepts_grafana_variables_and_target_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(leadbridge_ingest_seconds_bucket{namespace=~"$namespace"}'
        "[$__rate_interval])))"
    )
    assert check_expression(expr, "example") == {"leadbridge_ingest_seconds"}
