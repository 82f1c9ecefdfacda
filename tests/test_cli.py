"""The `leadbridge` command as a newcomer uses it: real subprocesses, real ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import orjson
import pytest

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "CONNECT_", "REDIS_"))}
    env.update({"BRIDGE_DATA_DIR": str(tmp_path / "data"), "BRIDGE_LOG_FORMAT": "json"})
    env.update(extra)
    return env


def _leadbridge(*args: str, env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BRIDGE_PORT", "eighty"),
        ("BRIDGE_MAX_BODY_BYTES", "-5"),
        ("REDIS_URL", "http://nope"),
        ("BRIDGE_LOG_FORMAT", "xml"),
        ("BRIDGE_RETRY_WINDOW_S", "604800"),  # not shorter than the retention (7 days)
    ],
)
def test_a_bad_setting_is_one_readable_line(tmp_path: Path, variable: str, value: str) -> None:
    result = _leadbridge("run", "--sandbox", env=_env(tmp_path, **{variable: value}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("leadbridge: error: ")
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_run_without_upstream_names_the_missing_variable(tmp_path: Path) -> None:
    result = _leadbridge("run", env=_env(tmp_path))
    assert result.returncode == 2
    assert "CONNECT_BASE_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_explains_the_commands(tmp_path: Path) -> None:
    result = _leadbridge("--help", env=_env(tmp_path))
    assert result.returncode == 0
    for command in ("run", "serve", "worker", "sandbox", "mappings", "dlq"):
        assert command in result.stdout


def test_version_is_the_installed_distributions(tmp_path: Path) -> None:
    result = _leadbridge("--version", env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"leadbridge {metadata.version('leadbridge')}\n"


def test_the_quickstarts_dry_run_takes_the_demo_values_with_sandbox(tmp_path: Path) -> None:
    """README, Quickstart: `mappings test --sandbox` works on a fresh clone with nothing set; without
    --sandbox, each unset variable is named, and a hint says where the demo values are."""
    env = {k: v for k, v in _env(tmp_path).items() if not k.endswith("_SECRET")}
    sample = "mappings/samples/website-contact.json"
    result = _leadbridge("mappings", "test", "--sandbox", "website-contact", sample, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert orjson.loads(result.stdout)["commands"][0]["mapping"] == "website-contact"
    result = _leadbridge("mappings", "test", "website-contact", sample, env=env)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    unset = "environment variable WEBSITE_CONTACT_SECRET is not set and has no default"
    assert f"error: mappings/website-contact.yaml:13: verify.secret: {unset}" in lines
    assert lines.count("hint: add --sandbox to use the demo values of mappings/sandbox.env") == 1
    result = _leadbridge("mappings", "validate", "--sandbox", env=env)
    assert result.returncode == 0, result.stdout
    assert "hint:" not in result.stdout


def test_send_sample_to_a_bridge_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    result = _leadbridge("send-sample", "website-contact", "--url", url, env=_env(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"leadbridge: error: POST {url}/hooks/website-contact: ")
    assert lines[0].endswith("(is leadbridge running there?)")


def test_dlq_where_no_store_was_ever_made_says_so_and_makes_none(tmp_path: Path) -> None:
    """Not "the dead-letter queue is empty" from a new store started in the wrong folder."""
    result = _leadbridge("dlq", "list", env=_env(tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"leadbridge: error: no leadbridge store in {tmp_path / 'data'} ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str, dict[str, str]]]:
    """`leadbridge run --sandbox` as the README says, on free ports."""
    port = _free_port()
    env = _env(tmp_path, BRIDGE_PORT=str(port))
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--sandbox", "--sandbox-port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    upstream = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"upstream: (http://\S+)", line)
        if match:
            upstream = match.group(1)
        if "send-sample" in line:
            break
    assert upstream is not None, "".join(lines)
    # Keep draining its output so the process never blocks on a full pipe.
    drain = threading.Thread(target=lambda: [None for _ in process.stdout or []], daemon=True)
    drain.start()
    try:
        yield process, f"http://127.0.0.1:{port}", upstream, env
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        drain.join(timeout=10)
        process.stdout.close()


def test_a_second_run_sandbox_on_the_same_queue_is_warned_about(
    running: tuple[subprocess.Popen[str], str, str, dict[str, str]],
) -> None:
    first, _, _, env = running
    second = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--sandbox", "--sandbox-port", "0"],
        cwd=REPO,
        env=env | {"BRIDGE_PORT": str(_free_port())},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert second.stdout is not None
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("send-sample" in line for line in lines):
            line = second.stdout.readline()
            if not line:
                break
            lines.append(line)
        warned = [line for line in lines if line.startswith("leadbridge: warning: another leadbridge")]
        assert len(warned) == 1, "".join(lines)
        assert f"(pid {first.pid})" in warned[0]
        assert "BRIDGE_DATA_DIR" in warned[0]
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(timeout=10)
        second.stdout.close()


def test_run_sandbox_first_webhook_makes_one_lead(
    running: tuple[subprocess.Popen[str], str, str, dict[str, str]],
) -> None:
    process, url, upstream, env = running
    sent = _leadbridge("send-sample", "website-contact", "--url", url, env=env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "-> 202" in sent.stdout
    deadline = time.monotonic() + 10
    entries: list[object] = []
    while time.monotonic() < deadline and not entries:
        entries = httpx.get(f"{upstream}/sandbox/entries").json()["entries"]
        time.sleep(0.05)
    assert len(entries) == 1
    events = [e["type"] for e in httpx.get(f"{upstream}/sandbox/events").json()["events"]]
    assert events.count("table.entry.added") == 1
    # The Meta Lead Ads sample: its lead's answers come from the sandbox's Graph API stand-in.
    payload = REPO / "tests" / "fixtures" / "payloads" / "meta-lead-ads-form.json"
    sent = _leadbridge("send-sample", "meta-lead-ads-form", "--url", url, "--payload", str(payload), env=env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "-> 202" in sent.stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(entries) < 2:
        entries = httpx.get(f"{upstream}/sandbox/entries").json()["entries"]
        time.sleep(0.05)
    assert len(entries) == 2
    meta = entries[1]
    assert isinstance(meta, dict)
    assert meta["data"]["email"].endswith(".444444444444@example.com")
    assert meta["data"]["phone"].startswith("+4420794600")
    # A clean stop: SIGTERM drains and exits 0, and stops the embedded Valkey it started.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    state = Path(env["BRIDGE_DATA_DIR"]) / "valkey" / "server.json"
    assert not state.exists()


def test_mappings_test_takes_a_file_and_resolves_from_the_running_sandbox(tmp_path: Path) -> None:
    """A mapping being written is tried by its file's path (wherever it is, whatever its name);
    `--resolve --sandbox` reads the tables of the sandbox `run --sandbox` starts (BRIDGE_PORT + 10)."""
    env = _env(tmp_path)
    sample = "mappings/samples/website-contact.json"
    draft = tmp_path / "draft.yaml"
    draft.write_text(
        (REPO / "mappings/website-contact.yaml").read_text().replace("name: website-contact", "name: draft")
    )
    result = _leadbridge("mappings", "test", "--sandbox", str(draft), sample, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert orjson.loads(result.stdout)["commands"][0]["mapping"] == "draft"
    result = _leadbridge("mappings", "test", "--sandbox", str(tmp_path / "missing.yaml"), sample, env=env)
    assert result.returncode != 0
    assert "no mapping file at" in result.stdout + result.stderr

    port = _free_port()
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "bridge", "sandbox", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)  # polling another process's port, not a test sync
        env = env | {"BRIDGE_PORT": str(port - 10)}
        result = _leadbridge("mappings", "test", "--sandbox", "--resolve", "website-contact", sample, env=env)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "leadStateId" in result.stdout or "customFieldData" in result.stdout


def test_a_misspelt_setting_is_warned_about_by_name_not_value(tmp_path: Path) -> None:
    # BRIDGE_RETRY_WINDOW (no _S) would leave the default retry window in force, unsaid.
    env = _env(tmp_path, BRIDGE_RETRY_WINDOW="s3cr3t-looking-value", BRIDGE_NOT_A_THING="1")
    result = _leadbridge("mappings", "validate", env=env)  # (the shipped mappings lack their secrets here)
    assert "Traceback" not in result.stderr
    warnings = [orjson.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    messages = [w["msg"] for w in warnings if w["level"] == "warning"]
    assert messages == [
        "BRIDGE_NOT_A_THING is not a leadbridge setting and is ignored",
        "BRIDGE_RETRY_WINDOW is not a leadbridge setting and is ignored"
        " (did you mean BRIDGE_RETRY_WINDOW_S?)",
    ]
    assert "s3cr3t-looking-value" not in result.stderr + result.stdout
    quiet = _leadbridge("mappings", "validate", env=_env(tmp_path))
    assert "not a leadbridge setting" not in quiet.stderr
