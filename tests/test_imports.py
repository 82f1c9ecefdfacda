"""What each process imports (resident memory, issue 7): `serve` and `worker` load only their side,
optional heavy packages stay out, and the trims of bridge/imports.py keep the libraries working.

Each check runs a fresh interpreter, so what the test session imported does not count. RSS
figures are measured by bench/, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.providers.registry import MODULES

REPO = Path(__file__).resolve().parent.parent

NEVER = ["schemathesis", "hypothesis", "pytest", "rich", "pygments", "watchfiles", "bridge.sandbox"]
NEVER += ["difflib"]  # only to suggest a key in a mapping error
# cryptography's bindings (AES-GCM, X.509 via PyJWT): only with BRIDGE_ENCRYPTION_KEYS set
CRYPTO = ["cryptography.hazmat.bindings._rust", "jwt.api_jwt", "jwt.algorithms"]
WORKER_SIDE = ["httpx", "bridge.connect.client", "bridge.worker", "bridge.http.probe"]
WEB_SIDE = [
    "bridge.queue.ingest",  # the Accepter, built by Runtime.accepter when the web side first stores
    "bridge.queue.replypipe",
    "bridge.ratelimit",
    "bridge.app",
    "bridge.http.hooks",
    "bridge.http.admin",
    "bridge.http.openapi",
    "bridge.http.health",
]
# the web server stack: the worker answers its probes on plain asyncio (bridge/http/probe.py)
WEB_SERVER = ["uvicorn", "starlette", "anyio"]

SETUP = """
import sys
from pathlib import Path
from bridge import imports
imports.apply()
from bridge.processes import run_all
from bridge.runtime import Runtime
from bridge.settings import load_settings
settings = load_settings()
runtime = Runtime(settings, redis_url="redis://127.0.0.1:1", environ={})
"""

# What run_all(web=True) imports.
SERVE = f"""{SETUP}
from bridge.app import create_app
from bridge.http.server import web_server
web_server(create_app(settings, runtime=runtime), "127.0.0.1", 0, settings)
"""

# What Runtime.start_worker() and run_all(worker=True) import, without connecting anywhere.
WORKER = f"""{SETUP}
import bridge.connect.client, bridge.connect.tables, bridge.queue.circuit, bridge.worker
from bridge.http.probe import probe_server
probe_server(runtime, settings)
"""


def python(code: str) -> str:
    """What `code` prints, run by a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def loaded(code: str, names: list[str]) -> list[str]:
    """Which of `names` are in sys.modules after running `code` in a fresh interpreter."""
    report = f"\nimport json, sys\nprint(json.dumps(sorted(n for n in {names!r} if n in sys.modules)))\n"
    found: list[str] = json.loads(python(code + report))
    return found


@pytest.mark.parametrize(
    ("role", "code", "absent", "present"),
    [
        ("serve", SERVE, NEVER + CRYPTO + WORKER_SIDE, ["bridge.app", "bridge.http.hooks", *WEB_SERVER]),
        (
            "worker",
            WORKER,
            NEVER + CRYPTO + WEB_SIDE + WEB_SERVER,
            ["httpx", "bridge.worker", "arq.worker", "bridge.http.probe"],
        ),
    ],
)
def test_each_role_imports_only_its_side(role: str, code: str, absent: list[str], present: list[str]) -> None:
    assert loaded(code, absent + present) == sorted(present), role


def test_redis_works_without_loading_pyjwt_until_token_auth_uses_it() -> None:
    code = """
import sys
from bridge import imports
imports.apply()
import redis.asyncio
before = "jwt.api_jwt" in sys.modules
import redis.auth.token as token
# a token with alg none, as redis-py's JWToken decodes it (signature not verified)
value = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOi0xLCJvaWQiOiJ4In0."
assert token.JWToken(value).try_get("oid") == "x"
print(before, "jwt.api_jwt" in sys.modules)
"""
    assert python(code).split() == ["False", "True"]


def test_httpx_works_without_its_command_line_client() -> None:
    code = """
import sys
from bridge import imports
imports.apply()
import httpx
response = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(204))).get("http://x/")
print(response.status_code, "httpx._main" in sys.modules and sys.modules["httpx._main"] is not None)
"""
    assert python(code).split() == ["204", "False"]


def test_encryption_keys_load_cryptography_and_seal() -> None:
    code = """
import base64, sys
from bridge.queue.crypto import Keyring
empty = Keyring.parse(None)
before = "cryptography.hazmat.bindings._rust" in sys.modules
keyring = Keyring.parse(base64.b64encode(bytes(32)).decode())
assert keyring.open(keyring.seal(b"x", b"aad"), b"aad") == b"x"
print(before, "cryptography.hazmat.bindings._rust" in sys.modules)
"""
    assert python(code).split() == ["False", "True"]


def test_a_provider_module_is_imported_when_a_mapping_names_it() -> None:
    modules = [f"bridge.providers.{m.partition(':')[0]}" for m in MODULES.values()]
    code = f"""
from bridge.providers import PROVIDERS, build_provider
assert len(PROVIDERS) == {len(MODULES)}
build_provider("hmac", {{"secret": "s" * 32}})
"""
    # the XML stack only for providers with XML bodies (Salesforce)
    assert loaded(code, [*modules, "defusedxml"]) == ["bridge.providers.generic_hmac"]


def test_aiohttp_verifies_with_the_client_context_and_ssl_is_left_as_it_was() -> None:
    code = """
import ssl
from bridge import imports
imports.apply()
import aiohttp.connector as connector
from bridge.connect.client import build_http_client
from bridge.connect.tls import client_context
verified, unverified = connector._SSL_CONTEXT_VERIFIED, connector._SSL_CONTEXT_UNVERIFIED
client = build_http_client(timeout_s=1, max_connections=1)
transport = client._transport
print(verified is client_context() is transport.ssl_context,
      verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname,
      verified.cert_store_stats()["x509_ca"] > 100,
      unverified.verify_mode == ssl.CERT_NONE, unverified.cert_store_stats()["x509_ca"],
      "set_default_verify_paths" in ssl.SSLContext.__dict__,
      ssl.create_default_context().cert_store_stats()["x509_ca"] > 0)
"""
    assert python(code).split() == ["True", "True", "True", "True", "0", "False", "True"]
