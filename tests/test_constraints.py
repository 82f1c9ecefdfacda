"""constraints.txt: the exact versions `./dev` and the image install (written by `./dev lock`).

pyproject.toml keeps ranges; a fresh clone must still install what CI tested, not whatever was
released since. So the file pins every package leadbridge and its test tools pull in, and the
environment this suite runs in is exactly that set.
"""

from __future__ import annotations

from collections import deque
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def pinned() -> dict[NormalizedName, str]:
    pins: dict[NormalizedName, str] = {}
    for number, raw in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt:{number}: {line!r} is not NAME==VERSION"
        assert version, f"constraints.txt:{number}: {line!r} has no version"
        pins[canonicalize_name(name)] = version
    return pins


# Markers are evaluated here and on the oldest Python leadbridge supports: below 3.11.3, redis-py
# needs async-timeout, and a lock made on a newer 3.11 once left it out.
OLDEST_SUPPORTED = {"python_version": "3.11", "python_full_version": "3.11.0"}


def needed(root: str = "leadbridge", extras: frozenset[str] = frozenset({"test"})) -> set[NormalizedName]:
    """Every distribution `root` (with `extras`) requires, here or on the oldest supported Python,
    transitively as far as it is installed, markers evaluated."""
    seen: set[NormalizedName] = set()
    todo: deque[tuple[str, frozenset[str]]] = deque([(root, extras)])
    done: set[tuple[NormalizedName, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.popleft()
        key = (canonicalize_name(name), wanted)
        if key in done:
            continue
        done.add(key)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # needed only elsewhere (an older Python, the bench): its own needs unknown here
        for text in requirements:
            req = Requirement(text)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra, **environment})
                for extra in {"", *wanted}
                for environment in ({}, OLDEST_SUPPORTED)
            ):
                continue
            seen.add(canonicalize_name(req.name))
            todo.append((req.name, frozenset(req.extras)))
    return seen


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None  # needed on an older Python only


def test_every_line_is_an_exact_pin() -> None:
    assert len(pinned()) > 20


def test_every_package_leadbridge_and_its_tests_need_is_pinned() -> None:
    missing = sorted(needed() - pinned().keys())
    assert not missing, f"not in constraints.txt: {missing}; run ./dev lock"


def test_what_the_bench_installs_is_pinned() -> None:
    """bench/ installs its extras (`leadbridge[bench]`) with `-c constraints.txt` when missing."""
    direct = needed(extras=frozenset({"bench"})) - needed(extras=frozenset())
    assert {"matplotlib", "psutil"} <= direct
    missing = sorted(direct - pinned().keys())
    assert not missing, f"not in constraints.txt: {missing}; run ./dev lock"


def test_the_suite_runs_on_the_pinned_versions() -> None:
    pins = pinned()
    installed = {name: version for name in sorted(needed()) if name in pins and (version := _version(name))}
    differ = {name: (version, pins[name]) for name, version in installed.items() if version != pins[name]}
    assert not differ, f"installed vs constraints.txt: {differ}; reinstall with ./dev, or ./dev lock"
