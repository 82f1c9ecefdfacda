"""`leadbridge worker` replaces itself with `python -OO` where the -OO bytecode is compiled."""

from __future__ import annotations

import py_compile
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bridge import launch
from tests.servers import until
from tests.test_cli import REPO, _env, _free_port


@pytest.fixture
def sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module of the test's own as the only sentinel; its -OO bytecode not yet compiled."""
    package = tmp_path / "lb_sentinel_pkg"
    package.mkdir()
    source = package / "__init__.py"
    source.write_text('"""A docstring."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(launch, "SENTINELS", ("lb_sentinel_pkg",))
    return source


def compile_optimized(source: Path) -> None:
    py_compile.compile(str(source), optimize=2, doraise=True)


def test_a_worker_is_run_again_under_minus_OO_once_its_bytecode_exists(sentinel: Path) -> None:
    assert launch.optimized_argv(["worker"], {}) is None
    compile_optimized(sentinel)
    assert launch.optimized_argv(["worker"], {}) == [sys.executable, "-OO", "-P", "-m", "bridge", "worker"]


@pytest.mark.parametrize(
    "argv",
    [["serve"], ["run", "--sandbox"], ["mappings", "validate"], ["dlq", "list"], ["sandbox"], []],
)
def test_only_the_worker_is_run_again(sentinel: Path, argv: list[str]) -> None:
    compile_optimized(sentinel)
    assert launch.optimized_argv(argv, {}) is None


def test_BRIDGE_WORKER_OPTIMIZE_0_keeps_the_worker_as_started(sentinel: Path) -> None:
    compile_optimized(sentinel)
    assert launch.optimized_argv(["worker"], {"BRIDGE_WORKER_OPTIMIZE": "0"}) is None
    assert launch.optimized_argv(["worker"], {"BRIDGE_WORKER_OPTIMIZE": "1"}) is not None


def test_an_interpreter_that_does_not_know_its_path_keeps_the_worker_as_started(
    sentinel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_optimized(sentinel)
    monkeypatch.setattr(sys, "executable", "")  # embedded interpreters may leave it empty
    assert launch.optimized_argv(["worker"], {}) is None


def test_a_missing_sentinel_module_keeps_the_worker_as_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "SENTINELS", ("no_such_module_lb",))
    assert launch.optimized_argv(["worker"], {}) is None


def test_bridge_is_found_without_the_working_directory() -> None:
    # Installed (here: editable), so `-P` finds the same package.
    assert launch._importable_without_cwd()


def test_a_source_tree_that_is_not_installed_keeps_the_worker_as_started(
    tmp_path: Path, sentinel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_optimized(sentinel)
    monkeypatch.setattr(sys, "meta_path", [m for m in sys.meta_path if "editable" not in repr(m)])
    # sys.path[0] is the tree (the working directory of `python -m bridge`), and nothing else is.
    elsewhere = [p for p in sys.path if "site-packages" not in p and Path(p).resolve() != REPO]
    monkeypatch.setattr(sys, "path", [str(REPO), *elsewhere])
    assert not launch._importable_without_cwd()
    assert launch.optimized_argv(["worker"], {}) is None


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.mark.parametrize("optimize", ["1", "0"])
async def test_the_worker_process_keeps_its_pid_and_answers_its_probe(
    redis_url: str, tmp_path: Path, optimize: str
) -> None:
    if launch.optimized_argv(["worker"], {}) is None:
        pytest.skip("no -OO bytecode for the standard library or the venv (./dev compiles the venv's)")
    port = _free_port()
    (tmp_path / "mappings").mkdir()
    env = _env(
        tmp_path,
        REDIS_URL=redis_url,
        BRIDGE_MAPPINGS=str(tmp_path / "mappings"),
        CONNECT_BASE_URL="http://127.0.0.1:9",
        CONNECT_API_KEY="k",
        BRIDGE_WORKER_PROBE_PORT=str(port),
        BRIDGE_WORKER_OPTIMIZE=optimize,
    )
    script = Path(sys.executable).with_name("leadbridge")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(script), "worker"], cwd=tmp_path, env=env, stderr=out)
    try:
        async with httpx.AsyncClient(timeout=2) as http:

            async def ready() -> bool:
                assert process.poll() is None, log.read_text()
                try:
                    return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(ready, timeout_s=30, interval_s=0.1)
        argv = _cmdline(process.pid)
        if optimize == "1":
            assert argv == [sys.executable, "-OO", "-P", "-m", "bridge", "worker"]
        else:
            assert argv[1:] == [str(script), "worker"]
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
