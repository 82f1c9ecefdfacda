"""deploy/grafana/leadbridge-dashboard.json: valid, importable anywhere, and querying real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy_metrics import (
    OPERATIONS_METRICS,
    TARGET_LABELS,
    check_expression,
    exported_series,
    selectors,
)

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "leadbridge-dashboard.json"
GRID_WIDTH = 24


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return out


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target."""
    return [
        (f"panel {p['title']!r} target {t['refId']}", t["expr"])
        for p in panels()
        for t in p.get("targets", [])
    ]


def test_is_a_dashboard_with_a_stable_uid() -> None:
    data = dashboard()
    assert data["uid"] == "leadbridge"
    assert data["title"]
    assert isinstance(data["schemaVersion"], int)
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_query_names_exported_metrics_and_labels() -> None:
    found = queries()
    assert found
    for where, expr in found:
        check_expression(expr, where)


def test_every_operations_metric_is_on_the_dashboard() -> None:
    shown: set[str] = set()
    for where, expr in queries():
        shown |= check_expression(expr, where)
    missing = set(OPERATIONS_METRICS) - shown
    assert not missing, f"no panel shows {sorted(missing)}"


@pytest.mark.parametrize("histogram", ["leadbridge_ingest_seconds", "leadbridge_upstream_request_seconds"])
def test_latency_panels_show_p50_and_p99(histogram: str) -> None:
    exprs = [expr for _, expr in queries() if f"{histogram}_bucket" in expr]
    for quantile in ("0.5", "0.99"):
        assert any(f"histogram_quantile({quantile}," in e for e in exprs), f"{histogram}: no q{quantile}"


def test_variables_query_exported_metrics() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "mapping"):
        query = variables[name]["query"]["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"${name}: expected label_values(selector, label), got {query}"
        selector, label = match.groups()
        check_expression(selector, f"variable ${name}")
        (sel,) = selectors(selector)
        assert label in exported_series()[sel.metric].labels | TARGET_LABELS, f"${name}: no label {label}"


def test_every_panel_uses_the_datasource_variable() -> None:
    """Importable into any Grafana: no hard-coded data source uid."""
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_panels_fit_the_grid_without_overlapping() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0
        assert pos["x"] + pos["w"] <= GRID_WIDTH, panel["title"]
        xs, ys = range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        cells = {(x, y) for x in xs for y in ys}
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells
