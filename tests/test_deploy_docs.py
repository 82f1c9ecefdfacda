"""docs/operations.md stays true: the files, settings, commands and alerts it names exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from bridge.cli import _parser
from bridge.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operations.md"
RULES = REPO / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"


def code_lines() -> list[str]:
    lines, inside = [], False
    for line in DOC.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def test_named_repo_paths_exist() -> None:
    text = DOC.read_text()
    paths = set(re.findall(r"`((?:k8s|deploy|tests|docs)/[^`\s]+)`", text))
    paths |= {f"k8s/{p}" for p in re.findall(r"^  ((?:base|components|overlays)/[\w/-]*)", text, re.M)}
    assert len(paths) > 5
    for path in sorted(paths):
        assert (REPO / path.rstrip("/")).exists(), f"docs/operations.md names {path}, which does not exist"


def test_named_settings_are_settings() -> None:
    aliases = {f.alias for f in Settings.model_fields.values() if f.alias}
    named = set(re.findall(r"\b(BRIDGE_[A-Z_]+[A-Z]|CONNECT_[A-Z_]+[A-Z]|REDIS_URL)\b", DOC.read_text()))
    assert {"BRIDGE_WORKER_CONCURRENCY", "BRIDGE_SHUTDOWN_GRACE_S", "BRIDGE_ADMIN_TOKEN"} <= named
    assert named <= aliases, f"not settings: {sorted(named - aliases)}"


def test_every_alert_has_a_runbook_row() -> None:
    rule = yaml.safe_load(RULES.read_text())
    alerts = [r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]]
    text = DOC.read_text()
    for alert in alerts:
        assert f"| `{alert}` |" in text, f"{alert} is not explained in docs/operations.md"


def test_leadbridge_commands_in_examples_parse() -> None:
    commands = []
    for line in code_lines():
        match = re.search(r"(?:^|-- )leadbridge (.+?)(?:\s+#.*)?$", line.strip())
        if match:
            commands.append(shlex.split(match.group(1)))
    assert any(c[:2] == ["dlq", "replay"] for c in commands)
    for argv in commands:
        try:
            _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"`leadbridge {' '.join(argv)}` in docs/operations.md is not a valid command")
