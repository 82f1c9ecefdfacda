"""Fuzz POST /hooks/<mapping> at the HTTP level: hostile bodies and headers never crash the bridge.

One mapping per provider in the registry (tests/fixtures/hardening/mappings), served in process
(httpx.ASGITransport) with a real Valkey behind it. Hypothesis generates and mutates bodies of
every content type (JSON, deep nesting, huge numbers, urlencoded and multipart forms, XML with
entity and DTD attacks, random bytes, invalid UTF-8) with odd content types and header sets,
signed correctly most of the time so the parsers behind verification are reached. Each answer
must be a documented 4xx/2xx (never a 5xx), arrive within a deadline, and leave no ERROR log.

Each hypothesis example is a case plus VARIANTS cheap variants of it (byte mutations, another
content type, a dropped signature, an extra header), derived from a seed hypothesis draws, so
generation does not dominate and a failure still shrinks. The hypothesis run happens in a worker
thread; the requests are sent on the test's event loop, where the app and its Redis pool live.
LEADBRIDGE_FUZZ_EXAMPLES sets the examples per provider mapping (default below; raise it for a
longer run by hand). The exact counts are printed.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bridge.app import create_app
from bridge.http.openapi import document
from bridge.providers.registry import PROVIDERS
from bridge.runtime import Runtime
from tests.pipeline import test_settings as bridge_settings

FIXTURES = Path(__file__).parent / "fixtures" / "hardening"
SECRETS: dict[str, str] = json.loads((FIXTURES / "secrets.json").read_text())
DEFAULT_EXAMPLES = 200  # per provider mapping: x (1 + VARIANTS) requests, ~15 mappings -> ~24,000
VARIANTS = 7
EXAMPLES = int(os.environ.get("LEADBRIDGE_FUZZ_EXAMPLES", "0")) or DEFAULT_EXAMPLES
REQUEST_TIMEOUT_S = 5.0
MAX_ERROR_BODY_BYTES = 200
# The providers each case is signed for (others get random headers: their verifier is fuzzed).
SIGNED = {
    "none", "standard-webhooks", "hmac", "token", "basic-auth", "jotform", "salesforce",
    "meta-lead-ads", "pipedrive", "typeform", "tally",
}  # fmt: skip

# -- the cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    method: str
    body: bytes
    content_type: str | None
    headers: dict[str, bytes]
    query: dict[str, str]
    sign: bool
    kind: str
    seed: int = 0


@dataclass
class Tally:
    examples: int = 0
    cases: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    seconds: float = 0.0


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    value = draw(json_values | st.fixed_dictionaries({"email": st.text(max_size=30), "data": json_values}))
    # The stdlib writes NaN/Infinity tokens and unbounded integers: both must be refused or accepted cleanly.
    return json.dumps(value, ensure_ascii=draw(st.booleans())).encode()


@st.composite
def deep_bodies(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 80) | st.integers(60, 70) | st.integers(1000, 20_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"b":', b"}]")]))
    closed = draw(st.booleans())
    return opener * depth + b"1" + (closer * depth if closed else b"")


@st.composite
def number_bodies(draw: st.DrawFn) -> bytes:
    digits = draw(st.integers(1, 20_000))
    sign = draw(st.sampled_from([b"", b"-"]))
    exponent = draw(st.sampled_from([b"", b"e999999", b"E-999999", b".5e400", b"e+10"]))
    number = sign + b"9" * digits + exponent
    return draw(st.sampled_from([number, b'{"email": ' + number + b"}", b"[" + number + b"]"]))


form_text = st.text(max_size=30) | st.sampled_from(["", "=", "&", "%", "%zz", "%ff%fe", "+", "a[b]", "\x00"])


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(form_text, form_text), max_size=12))
    if draw(st.booleans()):
        pairs.append(("data.json", draw(json_bodies()).decode()))
    text = urlencode(pairs) if draw(st.booleans()) else "&".join(f"{k}={v}" for k, v in pairs)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def multipart_bodies(draw: st.DrawFn) -> bytes:
    boundary = draw(st.sampled_from([b"fuzzboundary", b"x", b"----WebKitFormBoundary7MA4YWxkTrZu0gW"]))
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(form_text).encode("utf-8", "surrogatepass")
        value = draw(st.binary(max_size=40) | form_text.map(lambda t: t.encode("utf-8", "surrogatepass")))
        disposition = b'Content-Disposition: form-data; name="' + name + b'"'
        if draw(st.booleans()):
            disposition += b'; filename="' + name + b'.txt"'
        extra = draw(st.sampled_from([b"", b"Content-Type: text/plain\r\n", b"X: " * 50 + b"\r\n"]))
        parts.append(b"--" + boundary + b"\r\n" + disposition + b"\r\n" + extra + b"\r\n" + value + b"\r\n")
    end = draw(st.sampled_from([b"--" + boundary + b"--\r\n", b"", b"--" + boundary]))
    return b"".join(parts) + end


XML_ATTACKS = [
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;">]><r>&d;&d;&d;</r>',
    b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:1/evil.dtd"><r/>',
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x">%p;]><r/>',
    b'<?xml version="1.0"?><?xml-stylesheet href="http://127.0.0.1:1/x"?><r/>',
    b"<r>" * 5000 + b"</r>" * 5000,
    b'<?xml version="1.0" encoding="utf-16"?><r/>',
    b'<?xml version="1.0" encoding="bogus"?><r/>',
]


@st.composite
def xml_bodies(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(XML_ATTACKS))
    org = draw(st.sampled_from([SECRETS["FUZZ_SF_ORG"], "00D000000000002", "", "x" * 300]))
    fields = "".join(
        f"<sf:{name}>{value}</sf:{name}>"
        for name, value in draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["Id", "Email", "FirstName", "Phone", "Status"]),
                    st.text(alphabet=st.characters(blacklist_characters="<&\x00"), max_size=20),
                ),
                max_size=5,
            )
        )
    )
    count = draw(st.integers(0, 3))
    notifications = "".join(
        f'<Notification><Id>04l{i}</Id><sObject xsi:type="sf:Lead" '
        f'xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{fields}</sObject></Notification>'
        for i in range(count)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{org}</OrganizationId><ActionId>04k0</ActionId>{notifications}"
        "</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode("utf-8", "surrogatepass")


INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82"]


@st.composite
def invalid_utf8_bodies(draw: st.DrawFn) -> bytes:
    base = draw(json_bodies() | form_bodies() | xml_bodies())
    at = draw(st.integers(0, len(base)))
    return base[:at] + draw(st.sampled_from(INVALID_UTF8)) + base[at:]


INSERTS = [b"{", b"[", b'"', b"\\", b"<", b"&", b"%", b"\x00", b"\xff", b"\r\n", b"--", b"]]>"]


def mutate(rng: random.Random, raw: bytes) -> bytes:
    """Byte-level mutations of a body: bit flips, inserts, deletes, truncation, repeats."""
    body = bytearray(raw)
    for _ in range(rng.randint(1, 6)):
        op = rng.choice(["flip", "insert", "delete", "truncate", "repeat"])
        at = rng.randint(0, len(body))
        if op == "flip" and at < len(body):
            body[at] ^= 1 << rng.randint(0, 7)
        elif op == "insert":
            body[at:at] = rng.choice(INSERTS)
        elif op == "delete":
            del body[at : at + rng.randint(1, 8)]
        elif op == "truncate":
            del body[at:]
        elif op == "repeat" and at < len(body):
            chunk = body[at : at + rng.randint(1, 64)]
            body[at:at] = chunk * rng.randint(1, 50)
    return bytes(body)


NATURAL = {
    "json": "application/json",
    "deep": "application/json",
    "numbers": "application/json",
    "form": "application/x-www-form-urlencoded",
    "multipart": "multipart/form-data; boundary=fuzzboundary",
    "xml": "text/xml; charset=utf-8",
    "bytes": "application/octet-stream",
    "utf8": "application/json",
}
ODD_CONTENT_TYPES = [
    None,
    "",
    "application/json; charset=utf-16",
    "application/json; charset=bogus",
    "APPLICATION/JSON",
    "text/plain",
    "application/x-www-form-urlencoded; charset=latin-1",
    "application/x-www-form-urlencoded; charset=nonsense",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=x",
    'multipart/form-data; boundary="' + "b" * 300 + '"',
    "text/xml",
    "application/xml",
    "application/soap+xml",
    "*/*",
    ";;;",
]
HEADER_NAMES = [
    "webhook-id", "webhook-timestamp", "webhook-signature", "x-signature", "x-timestamp",
    "authorization", "typeform-signature", "tally-signature", "x-hub-signature-256",
    "close-sig-hash", "close-sig-timestamp", "x-webflow-signature", "x-webflow-timestamp",
    "calendly-webhook-signature", "x-hubspot-signature-v3", "x-hubspot-request-timestamp",
    "x-hubspot-signature", "x-hubspot-signature-version", "x-webhook-token", "content-encoding",
    "x-forwarded-for", "x-forwarded-proto", "host", "expect",
]  # fmt: skip
# Header values: map control bytes (and DEL) to printable ones, keep the rest.
PRINTABLE = bytes(b if 0x20 <= b != 0x7F else 0x41 for b in range(256))


header_values = st.one_of(
    st.binary(max_size=60).map(lambda b: b.translate(PRINTABLE)),
    st.sampled_from([b"", b"v1,", b"sha256=", b"Basic !!!", b"t=,v1=", b"9" * 30, b"-1", b"a" * 5000]),
)
BODIES: dict[str, st.SearchStrategy[bytes]] = {
    "json": json_bodies(),
    "deep": deep_bodies(),
    "numbers": number_bodies(),
    "form": form_bodies(),
    "multipart": multipart_bodies(),
    "xml": xml_bodies(),
    "bytes": st.binary(max_size=2000),
    "utf8": invalid_utf8_bodies(),
}


def natural_kinds(provider: str) -> list[str]:
    """The body kinds whose natural content type this provider takes (all, for `any`)."""
    accepted = PROVIDERS[provider].content_types
    kinds = [k for k, ct in NATURAL.items() if not accepted or ct.split(";")[0] in accepted]
    return kinds or sorted(NATURAL)


@st.composite
def cases(draw: st.DrawFn, provider: str) -> Case:
    kinds = natural_kinds(provider)
    # Hypothesis starts from the simplest draws (zeros): make those the natural, signed POST.
    kind = draw(st.sampled_from(kinds) if draw(st.integers(0, 7)) < 7 else st.sampled_from(sorted(BODIES)))
    body = draw(BODIES[kind])
    if draw(st.integers(0, 3)) == 3:
        body = mutate(random.Random(draw(st.integers(0, 2**32))), body)
        kind += "+mutated"
    natural = draw(st.integers(0, 9)) < 9
    content_type = NATURAL[kind.split("+")[0]] if natural else draw(st.sampled_from(ODD_CONTENT_TYPES))
    headers = draw(st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=3))
    method = draw(st.sampled_from(["POST"] * 14 + ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]))
    query = draw(
        st.dictionaries(
            st.sampled_from(["token", "hub.mode", "hub.verify_token", "hub.challenge", "x"]),
            st.text(max_size=20) | st.sampled_from([SECRETS["FUZZ_TOKEN"], "subscribe"]),
            max_size=3,
        )
    )
    sign = draw(st.integers(0, 5)) < 5
    return Case(method, body, content_type, headers, query, sign, kind, seed=draw(st.integers(0, 2**32)))


def variants(case: Case) -> list[Case]:
    """The case and VARIANTS cheap relatives of it, derived from its seed."""
    rng = random.Random(case.seed)
    out = [case]
    for _ in range(VARIANTS):
        headers = dict(case.headers)
        if rng.random() < 0.3:
            headers[rng.choice(HEADER_NAMES)] = rng.randbytes(rng.randint(0, 40)).translate(PRINTABLE)
        content_type = case.content_type if rng.random() < 0.85 else rng.choice(ODD_CONTENT_TYPES)
        body = mutate(rng, case.body) if rng.random() < 0.8 else case.body
        sign = case.sign if rng.random() < 0.9 else not case.sign
        out.append(Case("POST", body, content_type, headers, case.query, sign, case.kind + "+variant"))
    return out


# -- signing (what a genuine sender adds), per provider -------------------------------------------


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def sign(provider: str, case: Case, now_s: int) -> tuple[dict[str, bytes], dict[str, str]]:
    """Headers and query parameters that authenticate this body for `provider`."""
    body, secret, token = case.body, SECRETS["FUZZ_SECRET"].encode(), SECRETS["FUZZ_TOKEN"]
    basic = b"Basic " + base64.b64encode(b"fuzz:" + SECRETS["FUZZ_PASSWORD"].encode())
    if provider == "standard-webhooks":
        key = base64.b64decode(SECRETS["FUZZ_WHSEC"].removeprefix("whsec_"))
        msg_id = f"msg_{uuid.uuid4().hex}"
        signature = base64.b64encode(_hmac(key, f"{msg_id}.{now_s}.".encode() + body))
        return {
            "webhook-id": msg_id.encode(),
            "webhook-timestamp": str(now_s).encode(),
            "webhook-signature": b"v1," + signature,
        }, {}
    if provider == "hmac":
        signature = _hmac(secret, f"{now_s}.".encode() + body).hex().encode()
        return {"x-timestamp": str(now_s).encode(), "x-signature": b"sha256=" + signature}, {}
    if provider in ("token", "jotform", "salesforce"):
        return ({}, {"token": token}) if len(body) % 2 else ({"x-webhook-token": token.encode()}, {})
    if provider in ("basic-auth", "pipedrive"):
        return {"authorization": basic}, {}
    if provider == "meta-lead-ads":
        return {"x-hub-signature-256": b"sha256=" + _hmac(secret, body).hex().encode()}, {}
    if provider == "typeform":
        return {"typeform-signature": b"sha256=" + base64.b64encode(_hmac(secret, body))}, {}
    if provider == "tally":
        return {"tally-signature": base64.b64encode(_hmac(secret, body))}, {}
    return {}, {}


# -- the app under test ----------------------------------------------------------------------------


def documented_statuses() -> dict[str, set[int]]:
    operations = document()["paths"]["/hooks/{name}"]
    return {method.upper(): {int(s) for s in op["responses"]} for method, op in operations.items()}


class ErrorLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Bridge:
    client: httpx.AsyncClient
    providers: dict[str, str]  # mapping name -> provider name
    errors: ErrorLogs


@pytest.fixture
async def bridge(redis_url: str, tmp_path: Path) -> AsyncIterator[Bridge]:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    providers = {}
    for path in sorted((FIXTURES / "mappings").glob("fuzz-*.yaml")):
        provider = path.stem.removeprefix("fuzz-")
        if provider in PROVIDERS:  # whatever providers exist when this runs
            shutil.copy(path, mappings / path.name)
            providers[path.stem] = provider
    settings = bridge_settings(mappings, BRIDGE_MAX_BODY_BYTES=256 * 1024, BRIDGE_READ_TIMEOUT_S=2)
    runtime = Runtime(settings, redis_url=redis_url, environ=SECRETS, upstream=("http://127.0.0.1:9", "k"))
    runtime.load_mappings()
    errors = ErrorLogs()
    root = logging.getLogger()
    root.addHandler(errors)
    transport = httpx.ASGITransport(app=create_app(settings, runtime=runtime))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as client:
            yield Bridge(client, providers, errors)
    finally:
        root.removeHandler(errors)
        await runtime.close()


async def send(bridge: Bridge, name: str, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    query = dict(case.query)
    if case.content_type is not None:
        headers["content-type"] = case.content_type.encode()
    if case.sign:
        extra_headers, extra_query = sign(bridge.providers[name], case, int(time.time()))
        headers.update(extra_headers)
        query.update(extra_query)
    content = case.body if case.method not in ("GET", "HEAD") else None
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        return await bridge.client.request(
            case.method, f"/hooks/{name}", params=query, headers=headers, content=content
        )


def run_property(
    loop: asyncio.AbstractEventLoop, provider: str, examples: int, check: Callable[[Case], Any]
) -> None:
    """Run hypothesis in this (worker) thread; each example's requests run on `loop`, the app's."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases(provider))
    def prop(case: Case) -> None:
        timeout_s = REQUEST_TIMEOUT_S * (VARIANTS + 2)
        asyncio.run_coroutine_threadsafe(check(case), loop).result(timeout=timeout_s)

    prop()


async def test_fuzzed_webhooks_never_crash_leak_or_hang(
    bridge: Bridge, capsys: pytest.CaptureFixture[str]
) -> None:
    allowed = documented_statuses()
    names = sorted(bridge.providers)
    assert {"fuzz-none", "fuzz-standard-webhooks", "fuzz-hmac"} <= set(names)
    totals: dict[str, Tally] = {}
    loop = asyncio.get_running_loop()
    for name in names:
        tally = totals[name] = Tally()

        async def check(example: Case, name: str = name, tally: Tally = tally) -> None:
            tally.examples += 1
            for case in variants(example):
                response = await send(bridge, name, case)
                tally.cases += 1
                tally.statuses[response.status_code] += 1
                status = response.status_code
                assert status < 500, (name, case.kind, status, response.text[:200])
                assert status in allowed[case.method], (name, case.method, status)
                if status >= 400 and case.method != "HEAD":
                    assert len(response.content) <= MAX_ERROR_BODY_BYTES, response.text[:300]
                assert not bridge.errors.records, [r.getMessage() for r in bridge.errors.records]

        started = time.perf_counter()
        await asyncio.to_thread(run_property, loop, bridge.providers[name], EXAMPLES, check)
        tally.seconds = time.perf_counter() - started

    total = sum(t.cases for t in totals.values())
    with capsys.disabled():
        examples = sum(t.examples for t in totals.values())
        print(
            f"\nfuzz /hooks/<mapping>: {total} requests ({examples} hypothesis examples, "
            f"{VARIANTS} variants each) over {len(names)} provider mappings"
        )
        for name, tally in totals.items():
            statuses = ", ".join(f"{s}: {n}" for s, n in sorted(tally.statuses.items()))
            print(f"  {name:<24} {tally.cases:>6} requests in {tally.seconds:5.1f} s  [{statuses}]")
    assert total >= EXAMPLES * (1 + VARIANTS) * len(names)
    # The generated cases reach past verification: these providers accepted some of them.
    reached = {name for name, tally in totals.items() if tally.statuses[202] or tally.statuses[200]}
    assert {"fuzz-none", "fuzz-standard-webhooks", "fuzz-hmac"} <= reached
