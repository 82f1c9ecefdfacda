"""`hmac`: a configurable HMAC signature, for in-house systems and tools you script yourself.

The signature header (`header`) holds `prefix` + the `encoding` (hex or base64) of
HMAC-`algorithm`(secret, signed content). The signed content is the `signed` template with
`{body}` replaced by the raw body bytes and `{timestamp}` by the `timestamp_header` value as
sent, e.g. `"{timestamp}.{body}"` (Stripe-like) — `{body}` must appear exactly once, `{timestamp}`
needs `timestamp_header`, and `timestamp_header` needs `{timestamp}` (an unsigned timestamp
stops no replay). With a timestamp header, timestamps (`timestamp_unit` s or ms) more
than `tolerance_s` away from now in either direction are refused. The header may carry several
signatures separated by commas or spaces (rotation on the sender's side); any match passes.
Hex is compared case-insensitively. Any JSON, urlencoded or multipart body is accepted (see
`generic`); the event id is a hash of the body, or the field `event_id_field` names.
"""

from __future__ import annotations

import re
import string
from typing import Literal, Self

from pydantic import Field, model_validator

from bridge.errors import Unauthorized
from bridge.providers.base import InboundRequest, Secrets, Verified, secrets_of
from bridge.providers.checks import (
    Algorithm,
    Encoding,
    check_fresh,
    header,
    integer_timestamp,
    signed_by_any,
)
from bridge.providers.generic import GenericBodyOptions, GenericProvider

PLACEHOLDERS = {"body", "timestamp"}
SEPARATORS = re.compile(r"[,\s]+")


class HmacOptions(GenericBodyOptions):
    secret: Secrets
    header: str = Field(default="X-Signature", min_length=1, max_length=100)
    algorithm: Algorithm = "sha256"
    encoding: Encoding = "hex"
    prefix: str = Field(default="", max_length=32)
    signed: str = Field(default="{body}", max_length=200)
    timestamp_header: str | None = Field(default=None, min_length=1, max_length=100)
    timestamp_unit: Literal["s", "ms"] = "s"
    tolerance_s: int = Field(default=300, gt=0)

    @model_validator(mode="after")
    def _template(self) -> Self:
        try:
            parsed = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(self.signed)]
        except ValueError:
            raise ValueError("signed: unbalanced braces (write {{ or }} for a literal brace)") from None
        fields = [name for name, _, _ in parsed if name is not None]
        if any(spec or conv for name, spec, conv in parsed if name is not None):
            raise ValueError("signed: placeholders take no format spec or conversion")
        unknown = set(fields) - PLACEHOLDERS
        if unknown:
            known = "{body}, {timestamp}"
            raise ValueError(f"signed: unknown placeholder(s) {sorted(unknown)}; known: {known}")
        if fields.count("body") != 1:
            raise ValueError("signed: must contain {body} exactly once")
        if "timestamp" in fields and self.timestamp_header is None:
            raise ValueError("signed: {timestamp} needs timestamp_header")
        if self.timestamp_header is not None and "timestamp" not in fields:
            # Its age would be checked, but anyone could send a fresh one with a captured body.
            raise ValueError(
                "timestamp_header: the timestamp is not signed, so checking its age stops no replay; "
                "put {timestamp} in signed (e.g. '{timestamp}.{body}')"
            )
        return self


class HmacProvider(GenericProvider[HmacOptions]):
    name = "hmac"
    Options = HmacOptions

    def __init__(self, options: HmacOptions) -> None:
        super().__init__(options)
        self._keys = secrets_of(options.secret)
        # The template as literal text and placeholder names, in order ("{{" already unescaped).
        self._segments: list[tuple[str, str | None]] = [
            (literal, name) for literal, name, _, _ in string.Formatter().parse(options.signed)
        ]

    def _signed(self, request: InboundRequest, timestamp: str) -> bytes:
        out = bytearray()
        for literal, name in self._segments:
            out += literal.encode()
            if name == "body":
                out += request.body
            elif name == "timestamp":
                out += timestamp.encode()
        return bytes(out)

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        options = self.options
        timestamp = ""
        if options.timestamp_header is not None:
            timestamp = header(request, options.timestamp_header)
            value = integer_timestamp(timestamp)
            check_fresh(value / 1000 if options.timestamp_unit == "ms" else value, now_s, options.tolerance_s)
        given: list[bytes] = []
        for candidate in SEPARATORS.split(header(request, options.header))[:16]:
            if candidate.lower().startswith(options.prefix.lower()) and len(candidate) > len(options.prefix):
                given.append(candidate[len(options.prefix) :].encode())
        if not given:
            raise Unauthorized("no signature with the expected prefix")
        signed_by_any(
            self._keys,
            self._signed(request, timestamp),
            given,
            algorithm=options.algorithm,
            encoding=options.encoding,
        )
        return Verified(request=request, provider=self.name)
