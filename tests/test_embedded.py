from __future__ import annotations

import json
import os
from pathlib import Path

import redis

from bridge.queue.embedded import EmbeddedValkey


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
