"""`tally`: Tally form webhooks, signed with the webhook's signing secret.

Source: https://tally.so/help/webhooks ("Signing secret") — the header `Tally-Signature` is
`base64(HMAC-SHA256(signing secret, raw body))`, with no prefix and no timestamp. The event id
is the payload's `eventId`.
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


class TallyOptions(ProviderOptions):
    secret: Secrets


class TallyProvider(Provider[TallyOptions]):
    name = "tally"
    Options = TallyOptions

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        given = [header(request, "Tally-Signature").encode()]
        signed_by_any(secrets_of(self.options.secret), request.body, given, encoding="base64")
        return Verified(request=request, provider=self.name)

    def event_id(self, verified: Verified, payload: Any) -> str:
        event_id = id_text(payload.get("eventId")) if isinstance(payload, dict) else None
        return short_id(event_id) if event_id else body_hash(verified.request.body)
