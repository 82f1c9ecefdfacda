from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import redis

from bridge.queue.embedded import EmbeddedValkey, kept_running


def test_data_survives_a_restart(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
    with EmbeddedValkey(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        assert client.get("k") == b"v"
        client.close()


def test_data_survives_sigkill_of_the_server(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path).start()
    client = redis.Redis.from_url(server.url)
    client.set("k", "v")  # appendfsync always: on disk once the reply came
    client.close()
    server.kill()
    with EmbeddedValkey(tmp_path) as again:
        client = redis.Redis.from_url(again.url)
        assert client.get("k") == b"v"
        client.close()


def test_second_process_attaches_instead_of_starting_another(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path) as first:
        second = EmbeddedValkey(tmp_path).start()
        assert not second.owned
        assert second.url == first.url
        second.stop()  # not the owner: leaves the server running
        client = redis.Redis.from_url(first.url)
        assert client.ping()
        client.close()


def test_stale_record_of_a_dead_owner_is_replaced(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path).start()
    state_file = tmp_path / "valkey" / "server.json"
    state = json.loads(state_file.read_text())
    server.kill()
    # A record left by a process that died with kill -9: the owner pid no longer exists.
    state["owner_pid"] = 2**22 + 12345
    state_file.write_text(json.dumps(state))
    with EmbeddedValkey(tmp_path) as fresh:
        assert fresh.owned
        assert fresh.process is not None
        assert fresh.process.pid != state["pid"]
    assert not os.path.exists(state_file)


def test_a_server_that_dies_while_its_starter_runs_is_started_again(tmp_path: Path) -> None:
    """`leadbridge run` (embedded store): its Valkey killed (kill -9, out of memory) comes back by
    itself with everything it had answered, and is stopped cleanly at the end."""
    with EmbeddedValkey(tmp_path / "data") as server, kept_running(server, interval_s=0.05):
        client = redis.Redis.from_url(server.url)
        client.set("lead", "kept")
        first = server.process
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)

        def back() -> bool:
            try:
                return bool(client.get("lead") == b"kept")
            except redis.exceptions.ConnectionError:
                return False

        deadline = time.monotonic() + 20
        while not back():
            assert time.monotonic() < deadline, "the server did not come back"
            time.sleep(0.05)  # polling a restart in another thread, not a test sync
        restarted = server.process
        assert restarted is not None
        assert restarted.pid != first.pid
        client.close()
    assert restarted.poll() is not None  # stopped with its starter
