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
- aiohttp (>= 3.10) builds two TLS contexts when `aiohttp.connector` is imported, each parsing the
  system's CA store (~1 MiB each), besides the one the upstream client uses. `_AiohttpTls` runs
  that module with its verified default set to `bridge.connect.tls.client_context()` (the
  client's own context, so still verifying, against certifi's bundle), and without loading a CA
  store into its unverified default, which verifies nothing.

Nothing happens at import time; tests/test_imports.py checks each trim.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import ssl
import sys
import types
from collections.abc import Iterator, Sequence
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


@contextlib.contextmanager
def _aiohttp_tls_defaults() -> Iterator[None]:
    """While aiohttp.connector runs: its verified default is our client context, and its
    unverified default loads no CA store."""
    from bridge.connect.tls import client_context

    verified = client_context()
    create = ssl.create_default_context
    ssl.create_default_context = lambda *args, **kwargs: verified
    ssl.SSLContext.set_default_verify_paths = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        ssl.create_default_context = create
        del ssl.SSLContext.set_default_verify_paths  # the method of _ssl._SSLContext again


class _AiohttpTls(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `aiohttp.connector` as usual and runs it inside `_aiohttp_tls_defaults()`."""

    NAME = "aiohttp.connector"

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.NAME:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        with _aiohttp_tls_defaults():
            self._loader.exec_module(module)


def apply() -> None:
    for name in DEFERRED:
        defer(name)
    for name in SKIPPED:
        skip(name)
    if not any(isinstance(finder, _AiohttpTls) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AiohttpTls())
