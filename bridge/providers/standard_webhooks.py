"""`standard-webhooks`: the Standard Webhooks specification, exactly.

Source: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
(and its reference Python library). Headers `webhook-id`, `webhook-timestamp` (integer seconds)
and `webhook-signature` (space-separated `v1,<base64>` entries, so several signatures travel
during a key rotation; other versions such as `v1a` are ignored). The signed content is
`{id}.{timestamp}.{raw body}`, HMAC-SHA256 keyed with the base64-decoded part of the `whsec_…`
secret. Timestamps more than `tolerance_s` away from now, in either direction, are refused. The
event id is `webhook-id`. The spec's published test vector (`whsec_MfKQ…`, `msg_p5jX…`,
1614265330) is reproduced in the tests. The reference verifier leaks ValueError/binascii.Error
on malformed input; here every malformed input is an Unauthorized.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from pydantic import Field, field_validator

from bridge.errors import Unauthorized
from bridge.providers.base import (
    InboundRequest,
    Provider,
    ProviderOptions,
    Secrets,
    Verified,
    any_equal,
    secrets_of,
    short_id,
)


class StandardWebhooksOptions(ProviderOptions):
    secret: Secrets
    tolerance_s: int = Field(default=300, gt=0)

    @field_validator("secret")
    @classmethod
    def _decodable(cls, value: Secrets) -> Secrets:
        for secret in secrets_of(value):
            decode_secret(secret)
        return value


def decode_secret(secret: bytes) -> bytes:
    """`whsec_<base64>` → key bytes. A secret without the prefix is taken as base64 too."""
    try:
        text = secret.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("a standard-webhooks secret must be whsec_ followed by base64") from None
    if text.startswith("whsec_"):
        text = text[len("whsec_") :]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a standard-webhooks secret must be whsec_ followed by base64") from None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message (also used by tests and the CLI's samples)."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class StandardWebhooksProvider(Provider[StandardWebhooksOptions]):
    name = "standard-webhooks"
    Options = StandardWebhooksOptions

    def __init__(self, options: StandardWebhooksOptions) -> None:
        super().__init__(options)
        self._keys = [decode_secret(s) for s in secrets_of(options.secret)]

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        msg_id = request.headers.get("webhook-id", "")
        raw_ts = request.headers.get("webhook-timestamp", "")
        header = request.headers.get("webhook-signature", "")
        if not msg_id or not raw_ts or not header:
            raise Unauthorized("missing standard-webhooks header")
        if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 20:
            raise Unauthorized("timestamp is not an integer")
        timestamp = int(raw_ts)
        if abs(now_s - timestamp) > self.options.tolerance_s:
            raise Unauthorized("timestamp outside tolerance")
        given: list[bytes] = []
        for entry in header.split(" ")[:64]:
            version, _, value = entry.partition(",")
            if version == "v1" and value:
                given.append(value.encode())
        expected = [sign(key, msg_id, timestamp, request.body)[3:].encode() for key in self._keys]
        if not given or not any_equal(given, expected):
            raise Unauthorized("no matching signature")
        return Verified(request=request, provider=self.name, facts={"event_id": msg_id})

    def event_id(self, verified: Verified, payload: object) -> str:
        return short_id(verified.facts["event_id"])
