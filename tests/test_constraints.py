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


def needed(root: str = "leadbridge", extras: frozenset[str] = frozenset({"test"})) -> set[NormalizedName]:
    """Every distribution `root` (with `extras`) requires here, transitively, markers evaluated."""
    seen: set[NormalizedName] = set()
    todo: deque[tuple[str, frozenset[str]]] = deque([(root, extras)])
    done: set[tuple[NormalizedName, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.popleft()
        key = (canonicalize_name(name), wanted)
        if key in done:
            continue
        done.add(key)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in {"", *wanted}
            ):
                continue
            seen.add(canonicalize_name(req.name))
            todo.append((req.name, frozenset(req.extras)))
    return seen


def test_every_line_is_an_exact_pin() -> None:
    assert len(pinned()) > 20


def test_every_package_leadbridge_and_its_tests_need_is_pinned() -> None:
    missing = sorted(needed() - pinned().keys())
    assert not missing, f"not in constraints.txt: {missing}; run ./dev lock"


def test_the_suite_runs_on_the_pinned_versions() -> None:
    pins = pinned()
    installed = {name: metadata.version(name) for name in sorted(needed()) if name in pins}
    differ = {name: (version, pins[name]) for name, version in installed.items() if version != pins[name]}
    assert not differ, f"installed vs constraints.txt: {differ}; reinstall with ./dev, or ./dev lock"
