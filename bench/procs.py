"""The processes the benchmark starts, and making sure every one of them ends.

Every child is started in its own session (its own process group, whose id is its pid) with
PR_SET_PDEATHSIG, so that it is signalled even if the bench itself is killed with SIGKILL.
`Processes.stop_all()` (called from `finally`, on Ctrl-C, on SIGTERM and on the time budget's
alarm) sends SIGTERM to each recorded group, waits, then SIGKILLs what is left. Only the groups
recorded here are ever signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _child_setup() -> None:  # pragma: no cover - runs between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in its own process group; output goes to log_dir/name.log unless `stdout`."""
        if name in self._running:
            raise RuntimeError(f"{name} is already running")
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        try:
            process = subprocess.Popen(
                list(argv),
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        finally:
            log.close()
        self._running[name] = process
        return process

    def pid(self, name: str) -> int:
        return self._running[name].pid

    def alive(self, name: str) -> bool:
        process = self._running.get(name)
        return process is not None and process.poll() is None

    def stop(self, name: str, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the process group, wait up to timeout_s, then SIGKILL it. Returns the exit code."""
        process = self._running.pop(name, None)
        if process is None:
            return None
        self._signal(process, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._signal(process, signal.SIGKILL)
            return process.wait(timeout=5)
        finally:
            # Anything the child left in its group (a grandchild) goes too.
            self._signal(process, signal.SIGKILL)

    def stop_all(self, timeout_s: float = 5.0) -> None:
        names = list(self._running)
        for name in names:
            self._signal(self._running[name], signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name in names:
            process = self._running.pop(name)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            self._signal(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # The group id is the child's pid (start_new_session); never signal anything else.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
