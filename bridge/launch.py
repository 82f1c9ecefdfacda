"""The `leadbridge` command's entry point: a worker runs its interpreter with -OO.

Docstrings are kept in memory by every module a process imports: about 2.5 MiB of a worker's
~55 MiB (docs/performance.md). A worker needs none of them (the web side does: its OpenAPI
document and mapping schema take their descriptions from docstrings), so `leadbridge worker`
replaces itself (exec: same process id, same environment) with `python -OO -P -m bridge worker`.

It does so only where the -OO bytecode is already compiled (`./dev` and the image compile it);
without it, every start would compile every module from source, slower and with more memory than
-OO saves. `-P` keeps the working directory off `sys.path`, as the console script does. Set
`BRIDGE_WORKER_OPTIMIZE=0` to run the worker as started (with its asserts and docstrings).

This module imports nothing heavy: the exec happens before pydantic, redis or aiohttp load.

It also gives SIGTERM a handler first thing. In a container leadbridge is PID 1, and the kernel
drops any signal PID 1 has no handler for: a SIGTERM during start-up (before the event loop
installs its own) was lost, and the pod started, took jobs, and was SIGKILLed later, mid-job.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

OPTIMIZED_COMMANDS = frozenset({"worker"})
# Modules whose -OO bytecode must exist: the standard library, the worker's largest
# dependencies, and leadbridge's own worker.
SENTINELS = ("asyncio", "pydantic", "aiohttp", "redis", "bridge.worker")


def optimized_argv(argv: Sequence[str], environ: Mapping[str, str]) -> list[str] | None:
    """The command line to exec instead of this one, or None to go on as started."""
    if not argv or argv[0] not in OPTIMIZED_COMMANDS:
        return None
    if not sys.executable or sys.flags.optimize >= 2 or environ.get("BRIDGE_WORKER_OPTIMIZE", "1") == "0":
        return None
    if not _importable_without_cwd() or not _optimized_bytecode_exists():
        return None
    return [sys.executable, "-OO", "-P", "-m", "bridge", *argv]


def _sources() -> list[Path]:
    sources = []
    for name in SENTINELS:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            return []
        sources.append(Path(spec.origin))
    return sources


def _optimized_bytecode_exists() -> bool:
    sources = _sources()
    return bool(sources) and all(
        Path(importlib.util.cache_from_source(str(source), optimization=2)).is_file() for source in sources
    )


def _importable_without_cwd() -> bool:
    """Whether `bridge` is found once -P leaves sys.path[0] (the script's or the working
    directory) out: installed, or installed editable, rather than run from a source tree."""
    rest = sys.path if sys.flags.safe_path else sys.path[1:]
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder:
            spec = importlib.machinery.PathFinder.find_spec("bridge", rest)
        else:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec("bridge", None) if find_spec is not None else None
        if spec is not None:
            return (
                spec.origin is not None
                and Path(spec.origin).resolve() == Path(__file__).with_name("__init__.py").resolve()
            )
    return False


def _terminated(signum: int, _frame: object) -> None:
    """SIGTERM before the event loop handles it: exit as the default action would (128 + 15),
    through the `finally`s and `with`s of start-up (an embedded Valkey started is stopped)."""
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    argv = sys.argv[1:]
    replacement = optimized_argv(argv, os.environ)
    if replacement is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, replacement)  # noqa: S606 - the argv built above, no shell
    from bridge.cli import main as cli_main

    cli_main(argv)
