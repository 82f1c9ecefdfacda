"""Hot reload: a good change replaces the set, a bad one keeps it and logs why; watch() sees new files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

import pytest

from bridge.errors import MappingValidationError
from bridge.mapping.registry import MappingRegistry

MAPPING = """\
version: 1
name: {name}
provider: none
verify: {{insecure: true}}
table: {table}
action: create
lead:
  data:
    email: email
"""


def write(path: Path, name: str, table: str = "t1") -> None:
    path.write_text(MAPPING.format(name=name, table=table))
    # make the change visible to mtime polling even within one clock tick
    stamp = time.time_ns() + 1_000_000_000 * (1 + len(os.listdir(path.parent)))
    os.utime(path, ns=(stamp, stamp))


def test_start_up_fails_on_a_bad_set(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\nname: Bad\n")
    with pytest.raises(MappingValidationError):
        MappingRegistry(tmp_path, {})


def test_reload_good_then_bad(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "a.yaml", "alpha")
    registry = MappingRegistry(tmp_path, {})
    first = registry.current
    assert first.names == ["alpha"]

    write(tmp_path / "a.yaml", "alpha", table="t2")
    write(tmp_path / "b.yaml", "beta")
    assert registry.changed()
    assert registry.reload() is True
    assert registry.current.names == ["alpha", "beta"]
    alpha = registry.get("alpha")
    assert alpha is not None
    assert alpha.table == "t2"
    assert not registry.changed()

    good = registry.current
    (tmp_path / "c.yaml").write_text("version: 1\nname: gamma\nprovider: nope\ntable: t\naction: create\n")
    with caplog.at_level(logging.ERROR, logger="bridge.mapping"):
        assert registry.reload() is False
    assert registry.current is good
    messages = [record.getMessage() for record in caplog.records if record.name == "bridge.mapping"]
    assert any("keeping the previous 2 mapping(s)" in message for message in messages)
    assert any(
        f"{tmp_path / 'c.yaml'}:3: provider: unknown provider 'nope'" in message for message in messages
    )


def test_reload_logs_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "a.yaml", "alpha")
    registry = MappingRegistry(tmp_path, {})
    with caplog.at_level(logging.INFO, logger="bridge.mapping"):
        assert registry.reload()
    messages = [record.getMessage() for record in caplog.records]
    assert "mappings reloaded: alpha" in messages
    assert any("provider none accepts unverified requests" in message for message in messages)


async def _until(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_watch_reloads_new_changed_and_removed_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "a.yaml", "alpha")
    registry = MappingRegistry(tmp_path, {})
    task = asyncio.create_task(registry.watch(interval_s=0.02))
    try:
        write(tmp_path / "b.yaml", "beta")
        await _until(lambda: registry.current.names == ["alpha", "beta"])

        write(tmp_path / "b.yaml", "beta", table="t9")
        await _until(lambda: (m := registry.get("beta")) is not None and m.table == "t9")

        before = registry.current
        with caplog.at_level(logging.ERROR, logger="bridge.mapping"):
            (tmp_path / "b.yaml").write_text("version: 1\nname: beta\ntable: [\n")
            await _until(lambda: any("mapping reload failed" in r.getMessage() for r in caplog.records))
        assert registry.current is before
        # the bad state is remembered: the next polls see no change and do not report it again
        assert not registry.changed()

        (tmp_path / "b.yaml").unlink()
        await _until(lambda: registry.current.names == ["alpha"])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_single_file_registry(tmp_path: Path) -> None:
    path = tmp_path / "only.yaml"
    write(path, "only")
    registry = MappingRegistry(path, {})
    write(path, "renamed")
    assert registry.changed()
    assert registry.reload()
    assert registry.current.names == ["renamed"]
