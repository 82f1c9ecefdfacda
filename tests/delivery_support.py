"""Helpers for the delivery tests that run leadbridge as real processes: the environment they
get, starting and killing them, free ports, reading a Prometheus text page."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.servers import until

CLEAN_PREFIXES = ("BRIDGE_", "CONNECT_", "REDIS_")


def env(**values: str | Path | float) -> dict[str, str]:
    """The test's environment without any leadbridge setting, plus `values`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(CLEAN_PREFIXES)}
    base.update({"BRIDGE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    base.update({k: str(v) for k, v in values.items()})
    return base


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def leadbridge(*args: str, environ: dict[str, str], timeout_s: float = 30) -> tuple[int, str, str]:
    """Run one `leadbridge` command to completion: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class Service:
    """A long-running `leadbridge ...` process in its own process group, logging to a file."""

    args: list[str]
    environ: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self) -> Service:
        self.starts += 1
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", *self.args],
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the process and anything it started in it)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.kill_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill_group(signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def wait_ready(
    http: httpx.AsyncClient, url: str, service: Service | None = None, timeout_s: float = 30
) -> None:
    """Poll `url` until it answers 200 (failing early if the service died)."""

    async def ready() -> bool:
        if service is not None and service.proc is not None and service.proc.poll() is not None:
            raise AssertionError(f"{service.args} exited early:\n{service.log_text()[-3000:]}")
        try:
            return (await http.get(url, timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    await until(ready, timeout_s=timeout_s, interval_s=0.05)


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text page (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric == name and found == wanted:
            return float(value)
    return 0.0
