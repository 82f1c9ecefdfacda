"""Two web and two worker processes on one Redis share the work (the Kubernetes shape)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson

from bridge import launch
from bridge.sandbox import DEMO_API_KEY, create_sandbox_app
from tests.pipeline import CONTACT_MAPPING, SECRET, sign
from tests.servers import serve, until
from tests.test_cli import REPO, _free_port
from tests.test_observability import _sample


@contextmanager
def _processes(commands: list[tuple[str, dict[str, str]]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "bridge", command],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for command, env in commands
    ]
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_two_webs_and_two_workers_share_the_work(redis_url: str, tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "contact.yaml").write_text(CONTACT_MAPPING)
    sandbox = create_sandbox_app(DEMO_API_KEY)
    async with serve(sandbox) as sandbox_url, httpx.AsyncClient(timeout=10) as http:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "CONNECT_", "REDIS_"))}
        base |= {
            "REDIS_URL": redis_url,
            "BRIDGE_MAPPINGS": str(mappings),
            "CONTACT_SECRET": SECRET,
            "CONNECT_BASE_URL": sandbox_url,
            "CONNECT_API_KEY": DEMO_API_KEY,
            "BRIDGE_LOG_FORMAT": "json",
            "BRIDGE_WORKER_CONCURRENCY": "4",
        }
        web_ports = [_free_port(), _free_port()]
        probe_ports = [_free_port(), _free_port()]
        commands = [("serve", base | {"BRIDGE_PORT": str(p)}) for p in web_ports] + [
            ("worker", base | {"BRIDGE_WORKER_PROBE_PORT": str(p)}) for p in probe_ports
        ]
        with _processes(commands) as processes:

            async def all_up() -> bool:
                for port in web_ports + probe_ports:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code != 200:
                            return False
                    except httpx.TransportError:
                        return False
                return all(p.poll() is None for p in processes)

            await until(all_up, timeout_s=60, interval_s=0.1)
            if launch.optimized_argv(["worker"], {}) is not None:
                # Each worker has replaced itself (same pid) with `python -OO` (bridge/launch.py).
                for process in processes[2:]:
                    assert b"-OO" in Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[1:3]
            count = 120
            answers = []
            for i in range(count):
                raw = orjson.dumps({"data": {"email": f"lead{i}@example.com", "first_name": "L"}})
                port = web_ports[i % 2]
                answers.append(
                    http.post(f"http://127.0.0.1:{port}/hooks/contact", content=raw, headers=sign(raw))
                )
            results = await asyncio.gather(*answers)
            assert [r.status_code for r in results] == [202] * count

            async def all_delivered() -> bool:
                entries = (await http.get(f"{sandbox_url}/sandbox/entries")).json()["entries"]
                return len(entries) == count

            await until(all_delivered, timeout_s=60, interval_s=0.1)
            created: list[float] = []

            async def all_counted() -> bool:
                # The sandbox has the entries a moment before each worker counts its command.
                created.clear()
                for port in probe_ports:
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                    created.append(
                        _sample(
                            text,
                            "leadbridge_commands_total",
                            mapping="contact",
                            action="upsert",
                            outcome="created",
                        )
                    )
                return sum(created) == count

            await until(all_counted, timeout_s=10, interval_s=0.05)
            assert all(n > 0 for n in created), created
            accepted = []
            for port in web_ports:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                accepted.append(
                    _sample(text, "leadbridge_webhooks_total", mapping="contact", outcome="accepted")
                )
            assert accepted == [count / 2, count / 2]
            worker_ready = await http.get(f"http://127.0.0.1:{probe_ports[0]}/readyz")
            assert worker_ready.json()["workers"] >= 2
