"""The image, without Docker: replay the Dockerfile's build and install steps, then start the app.

No Docker engine runs in CI, so this test does what the two stages do, with the same commands
read from the Dockerfile: copy what the builder copies into a fresh context, run its `pip wheel`,
create a clean venv and run the runtime stage's install into it (wheelhouse only, --no-index),
then start ENTRYPOINT + CMD (`leadbridge serve`) with the runtime stage's ENV, a real Valkey and
a one-mapping folder, and check it answers /healthz, /readyz and /metrics, passes the image's
HEALTHCHECK, and stops cleanly on SIGTERM; and that `leadbridge worker` from it runs under -OO
(bridge/launch.py). pip's own cache is reused, so this takes seconds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_deploy_dockerfile import builder_and_runtime, copy_sources, marked_run

REPO = Path(__file__).resolve().parent.parent
MAPPING = REPO / "tests" / "fixtures" / "deploy" / "smoke.yaml"
BUILD_TIMEOUT_S = 240.0
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 30.0

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def shell(command: str, cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def python_on_path() -> str:
    """A PATH whose `python` is this interpreter (the base image's `python`, here)."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


def build_context(dest: Path) -> Path:
    """Copy what the builder stage COPYs (WORKDIR-relative destinations) into a fresh folder."""
    builder, _ = builder_and_runtime()
    for sources, target in copy_sources(builder):
        for src in sources:
            origin = REPO / src
            assert origin.exists(), f"the Dockerfile copies {src}, which does not exist"
            into = dest / target
            if target.endswith("/") or len(sources) > 1:
                into = into / Path(src).name
            into.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, into, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, into)
    return dest


@pytest.fixture
def installed_venv(tmp_path: Path) -> Path:
    builder, runtime = builder_and_runtime()
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    context = build_context(tmp_path / "context")
    build_env = {**os.environ, **builder.env(), "PATH": python_on_path()}
    build_env.pop("PIP_NO_CACHE_DIR", None)  # reuse pip's cache, as the builder's cache mount does
    shell(marked_run(builder, "pip wheel").replace("/wheels", str(wheels)), context, build_env)
    assert list(wheels.glob("leadbridge-*.whl")), "the builder step made no leadbridge wheel"
    install = marked_run(runtime, "pip").replace("/wheels", str(wheels)).replace("/opt/venv", str(venv))
    shell(install, tmp_path, {**os.environ, "PATH": python_on_path()})
    return venv


def container_env(venv: Path, tmp_path: Path, redis_url: str) -> dict[str, str]:
    """The runtime stage's ENV (as in the image) plus what a Deployment would inject."""
    _, runtime = builder_and_runtime()
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    shutil.copy2(MAPPING, mappings / MAPPING.name)
    env = runtime.env()
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin",
        HOME=str(tmp_path),
        LANG="C.UTF-8",
        BRIDGE_HOST="127.0.0.1",  # the image listens on 0.0.0.0; tests stay on loopback
        BRIDGE_PORT=str(free_port()),
        BRIDGE_WORKER_PROBE_PORT=str(free_port()),
        BRIDGE_DATA_DIR=str(tmp_path / "data"),
        BRIDGE_MAPPINGS=str(mappings),
        REDIS_URL=redis_url,
        CONNECT_BASE_URL="http://127.0.0.1:9",
        CONNECT_API_KEY="deploy-test-key",
        BRIDGE_ADMIN_TOKEN="deploy-test-admin-token",
    )
    return env


Serving = tuple[subprocess.Popen[bytes], dict[str, str]]


@pytest.fixture
def serving(installed_venv: Path, tmp_path: Path, redis_url: str) -> Iterator[Serving]:
    _, runtime = builder_and_runtime()
    env = container_env(installed_venv, tmp_path, redis_url)
    argv = runtime.exec_form("ENTRYPOINT") + runtime.exec_form("CMD")
    entrypoint = shutil.which(argv[0], path=env["PATH"])
    assert entrypoint == str(installed_venv / "bin" / argv[0]), "ENTRYPOINT must resolve into the venv"
    logs = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [entrypoint, *argv[1:]], cwd=tmp_path, env=env, stdout=logs, stderr=subprocess.STDOUT
    )
    try:
        yield proc, env
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_DEADLINE_S)
        logs.close()


def output_of(tmp_path: Path) -> str:
    return (tmp_path / "serve.log").read_text(errors="replace")[-4000:]


def wait_for(url: str, proc: subprocess.Popen[bytes], tmp_path: Path) -> httpx.Response:
    """GET `url` until it answers 200, the process dies, or the deadline passes."""
    deadline = time.monotonic() + START_DEADLINE_S
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {url} answered:\n{output_of(tmp_path)}")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return response
            last = response.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)  # polling interval, not synchronisation
    pytest.fail(f"{url} gave no 200 within {START_DEADLINE_S}s (last: {last!r}):\n{output_of(tmp_path)}")


def test_the_installed_wheel_serves_like_the_image(serving: Serving, tmp_path: Path) -> None:
    proc, env = serving
    base = f"http://127.0.0.1:{env['BRIDGE_PORT']}"

    assert wait_for(f"{base}/healthz", proc, tmp_path).status_code == 200
    # Ready means the queue (REDIS_URL) is reachable and the mapping folder loaded.
    assert wait_for(f"{base}/readyz", proc, tmp_path).status_code == 200
    metrics = httpx.get(f"{base}/metrics", timeout=5.0)
    assert metrics.status_code == 200
    assert "# TYPE leadbridge_webhooks_total counter" in metrics.text

    # The image's HEALTHCHECK command passes against the running web.
    _, runtime = builder_and_runtime()
    (healthcheck,) = runtime.all("HEALTHCHECK")
    check_argv = json.loads(healthcheck.args.split(" CMD ", 1)[1])
    check = subprocess.run(check_argv, env=env, capture_output=True, timeout=20, check=False)
    assert check.returncode == 0, check.stderr

    # A rolling update sends SIGTERM: the process drains and exits by itself, in time.
    proc.send_signal(signal.SIGTERM)
    try:
        returncode = proc.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"leadbridge serve ignored SIGTERM for {STOP_DEADLINE_S}s:\n{output_of(tmp_path)}")
    assert returncode in (0, -signal.SIGTERM), output_of(tmp_path)


def test_the_installed_wheels_worker_runs_without_docstrings(
    installed_venv: Path, tmp_path: Path, redis_url: str
) -> None:
    """The install step compiles the -OO bytecode, so `leadbridge worker` replaces itself (same
    pid) with `python -OO` (bridge/launch.py) and answers its probe."""
    stdlib = Path(importlib.util.cache_from_source(asyncio.__file__, optimization=2))
    if not stdlib.is_file():  # a Debian python3, e.g.: the image's RUN that compiles it writes here
        pytest.skip("this Python's standard library has no -OO bytecode (the Dockerfile compiles it)")
    env = container_env(installed_venv, tmp_path, redis_url)
    entrypoint = str(installed_venv / "bin" / "leadbridge")
    with (tmp_path / "serve.log").open("wb") as logs:
        proc = subprocess.Popen(
            [entrypoint, "worker"], cwd=tmp_path, env=env, stdout=logs, stderr=subprocess.STDOUT
        )
    try:
        wait_for(f"http://127.0.0.1:{env['BRIDGE_WORKER_PROBE_PORT']}/healthz", proc, tmp_path)
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[1:6] == [b"-OO", b"-P", b"-m", b"bridge", b"worker"], argv
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_DEADLINE_S) in (0, -signal.SIGTERM), output_of(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_DEADLINE_S)
