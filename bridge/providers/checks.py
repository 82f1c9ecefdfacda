"""Building blocks the providers verify with: headers, timestamps, digests, tokens, basic auth.

Every helper fails closed with `Unauthorized` (whose public text never says why) and compares
secrets in constant time through `base.any_equal`. Nothing here knows a vendor; the vendor
modules combine these pieces exactly as each vendor publishes its scheme.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Literal

from pydantic import Field

from bridge.errors import Unauthorized
from bridge.providers.base import InboundRequest, ProviderOptions, Secrets, any_equal, secrets_of

Algorithm = Literal["sha1", "sha256", "sha512"]
Encoding = Literal["hex", "base64"]

# A header value we are willing to look at (signature headers are short; this bounds the work).
MAX_SIGNATURE_HEADER_CHARS = 4096


def header(request: InboundRequest, name: str) -> str:
    """A required header's value (names are lower-case); missing or empty is Unauthorized."""
    value = request.headers.get(name.lower(), "").strip()
    if not value:
        raise Unauthorized(f"missing header {name}")
    if len(value) > MAX_SIGNATURE_HEADER_CHARS:
        raise Unauthorized(f"header {name} too long")
    return value


def integer_timestamp(raw: str) -> int:
    """A timestamp header as an integer; anything but ASCII digits is Unauthorized."""
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise Unauthorized("timestamp is not an integer")
    return int(text)


def check_fresh(timestamp_s: float, now_s: float, tolerance_s: float) -> None:
    """Refuse a timestamp more than `tolerance_s` away from now, in either direction."""
    if abs(now_s - timestamp_s) > tolerance_s:
        raise Unauthorized("timestamp outside tolerance")


def digest(key: bytes, message: bytes, algorithm: Algorithm = "sha256") -> bytes:
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def encode(raw: bytes, encoding: Encoding) -> bytes:
    """A digest as the ASCII bytes a header carries (hex is lower-case)."""
    return raw.hex().encode() if encoding == "hex" else base64.b64encode(raw)


def signed_by_any(
    keys: list[bytes],
    message: bytes,
    given: list[bytes],
    *,
    algorithm: Algorithm = "sha256",
    encoding: Encoding = "hex",
) -> None:
    """Does any given signature match the HMAC of `message` under any key? Else Unauthorized.

    Hex signatures are compared lower-cased (hex is case-insensitive); base64 exactly.
    """
    if encoding == "hex":
        given = [g.lower() for g in given]
    expected = [encode(digest(key, message, algorithm), encoding) for key in keys]
    if not given or not any_equal(given, expected):
        raise Unauthorized("no matching signature")


class TokenOptions(ProviderOptions):
    """A shared token sent in the `token` query parameter or in the header named by `header`."""

    token: Secrets
    header: str = Field(default="X-Webhook-Token", min_length=1, max_length=100)


def check_token(request: InboundRequest, options: TokenOptions) -> None:
    """The request carries one of the configured tokens (query `token` or the header).

    The query is parsed as a form ('+' is a space), but vendors that cannot sign (Jotform,
    Salesforce) call the URL exactly as pasted, where '+' is a literal plus (RFC 3986): a token
    with '+' (base64) is also tried with its spaces read back as '+'. A URL cannot carry a raw
    space, so this only ever adds the spelling the operator typed."""
    query_token = request.query.get("token", "")
    candidates = (query_token, query_token.replace(" ", "+"), request.headers.get(options.header.lower(), ""))
    given = list(dict.fromkeys(value.encode() for value in candidates if value))
    if not given or not any_equal(given, secrets_of(options.token)):
        raise Unauthorized("token missing or wrong")


def basic_credentials(request: InboundRequest) -> tuple[bytes, bytes]:
    """The (username, password) of an `Authorization: Basic …` header (RFC 7617)."""
    scheme, _, encoded = header(request, "authorization").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise Unauthorized("not basic auth")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized("basic auth is not base64") from None
    username, colon, password = decoded.partition(b":")
    if not colon:
        raise Unauthorized("basic auth without a colon")
    return username, password


def check_basic(request: InboundRequest, username: str, password: Secrets) -> None:
    """Both the username and one of the passwords match; both are always compared."""
    given_user, given_password = basic_credentials(request)
    user_ok = any_equal([given_user], [username.encode()])
    password_ok = any_equal([given_password], secrets_of(password))
    if not (user_ok and password_ok):
        raise Unauthorized("wrong credentials")
