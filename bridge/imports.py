"""What the `leadbridge` processes keep third-party packages from importing (resident memory).

Every module a long-running process imports stays resident. Some dependencies import, at their
top, modules leadbridge never uses; `apply()` (called once by the CLI entry point, before
anything imports redis, httpx or uvicorn) keeps them out. RSS measured after import, Python 3.11:

- redis-py 5.3's `redis.auth.token` imports PyJWT for token (Entra ID) authentication, which
  leadbridge does not use; PyJWT imports cryptography's X.509 and asymmetric-key bindings:
  ~14 MiB. `defer("jwt")` stands in a module that imports the real PyJWT on first attribute
  use, so token authentication would still work. (redis-py 7 makes PyJWT optional; arq pins
  redis<6.)
- httpx imports its command-line client (`httpx._main`: click, rich, pygments) whenever those are
  installed (the test extras install rich): ~5 MiB. `skip("httpx._main")` makes httpx take its
  own fallback (`httpx.main` then says the CLI's dependencies are missing).
- uvicorn imports its `--reload` supervisor on watchfiles (a Rust extension): ~0.7 MiB. leadbridge
  runs `uvicorn.Server` itself and never reloads; `skip("uvicorn.supervisors.watchfilesreload")`
  makes uvicorn pick its stat-based reloader class instead (never started either).

Nothing happens at import time; tests/test_imports.py checks each trim.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

DEFERRED = ("jwt",)
SKIPPED = ("httpx._main", "uvicorn.supervisors.watchfilesreload")


class _Deferred(types.ModuleType):
    """A placeholder in sys.modules: the first attribute looked up imports the real module."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attr)


def defer(name: str) -> None:
    """Import `name` only when something uses it, not when something imports it."""
    if name not in sys.modules:
        sys.modules[name] = _Deferred(name)


def skip(name: str) -> None:
    """Make `import name` fail (ImportError), for an optional module a library guards with
    try/except ImportError."""
    sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def apply() -> None:
    for name in DEFERRED:
        defer(name)
    for name in SKIPPED:
        skip(name)
