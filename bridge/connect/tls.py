"""The process's one TLS client context, for the Connect API and enrich sources.

Each `ssl.SSLContext` that loads a CA store holds its own parsed copy of it (about 1 MiB of
resident memory). httpx builds one from certifi's bundle for every client, and aiohttp (>= 3.10)
builds two more when it is imported, from the system store. `client_context()` is the one the
worker's upstream client uses (certifi's bundle, as httpx's default), and `bridge.imports` makes
aiohttp's verified default this same context, so the worker parses one CA store instead of three.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def client_context() -> ssl.SSLContext:
    """Verifies certificates and host names against certifi's CA bundle (httpx's default)."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())
