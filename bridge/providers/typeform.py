"""`typeform`: Typeform webhooks, signed with the webhook's secret.

Source: https://www.typeform.com/developers/webhooks/secure-your-webhooks/ — the header
`Typeform-Signature: sha256=<base64(HMAC-SHA256(secret, raw body))>`; no timestamp is signed.
The event id is the payload's `event_id` (Typeform keeps it across its retries).
"""

from __future__ import annotations

from typing import Any

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
from bridge.providers.checks import header, signed_by_any

PREFIX = "sha256="


class TypeformOptions(ProviderOptions):
    secret: Secrets


class TypeformProvider(Provider[TypeformOptions]):
    name = "typeform"
    Options = TypeformOptions

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        value = header(request, "Typeform-Signature")
        given = [value[len(PREFIX) :].encode()] if value.startswith(PREFIX) else []
        signed_by_any(secrets_of(self.options.secret), request.body, given, encoding="base64")
        return Verified(request=request, provider=self.name)

    def event_id(self, verified: Verified, payload: Any) -> str:
        event_id = id_text(payload.get("event_id")) if isinstance(payload, dict) else None
        return short_id(event_id) if event_id else body_hash(verified.request.body)
