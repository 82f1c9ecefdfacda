"""`calendly`: Calendly webhook subscriptions, signed with the webhook signing key.

Source: https://developer.calendly.com/api-docs/overview/webhooks/webhook-signatures — the
header `Calendly-Webhook-Signature: t=<unix seconds>,v1=<hex>`, where the signature is the hex
HMAC-SHA256 of `{t}.{raw body}` keyed with the signing key; Calendly's example refuses
signatures older than three minutes, so `tolerance_s` defaults to 180 (applied in both
directions). Several `v1=` entries are all tried. Calendly payloads carry no event id: the id is
`{event}:{payload.uri}:{created_at}` (the invitee and the moment of the event), else a body hash.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from bridge.errors import Unauthorized
from bridge.providers.base import (
    InboundRequest,
    Provider,
    ProviderOptions,
    Secrets,
    Verified,
    body_hash,
    id_text,
    secrets_of,
    short_id,
)
from bridge.providers.checks import check_fresh, header, integer_timestamp, signed_by_any


class CalendlyOptions(ProviderOptions):
    secret: Secrets
    tolerance_s: int = Field(default=180, gt=0)


def parse_signature_header(value: str) -> tuple[str, list[bytes]]:
    """`t=…,v1=…[,v1=…]` → (timestamp text, [v1 signatures]); malformed is Unauthorized."""
    timestamp = ""
    signatures: list[bytes] = []
    for element in value.split(",")[:16]:
        key, _, item = element.strip().partition("=")
        if key == "t":
            timestamp = item
        elif key == "v1" and item:
            signatures.append(item.encode())
    if not timestamp or not signatures:
        raise Unauthorized("malformed Calendly-Webhook-Signature")
    return timestamp, signatures


class CalendlyProvider(Provider[CalendlyOptions]):
    name = "calendly"
    Options = CalendlyOptions

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        raw_ts, given = parse_signature_header(header(request, "Calendly-Webhook-Signature"))
        check_fresh(integer_timestamp(raw_ts), now_s, self.options.tolerance_s)
        signed_by_any(secrets_of(self.options.secret), raw_ts.encode() + b"." + request.body, given)
        return Verified(request=request, provider=self.name)

    def event_id(self, verified: Verified, payload: Any) -> str:
        if isinstance(payload, dict) and isinstance(payload.get("payload"), dict):
            parts = [
                id_text(payload.get("event")),
                id_text(payload["payload"].get("uri")),
                id_text(payload.get("created_at")),
            ]
            if all(parts):
                return short_id(":".join(p for p in parts if p))
        return body_hash(verified.request.body)
