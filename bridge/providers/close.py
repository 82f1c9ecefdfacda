"""`close`: Close CRM webhooks, signed with the subscription's `signature_key`.

Source: https://developer.close.com/resources/webhook-subscriptions/ ("Webhook signatures") — headers
`close-sig-hash` and `close-sig-timestamp`; the hash is the hex HMAC-SHA256 of the timestamp
header followed directly by the raw body (`timestamp + body`, no separator), keyed with the
**hex-decoded** `signature_key` that Close returns when the subscription is created. Close does
not publish a replay window; we refuse timestamps (Unix seconds) more than `tolerance_s` (300)
away from now in either direction. The event id is the payload's `event.id` (`ev_…`). Close
updates an existing event when more actions on the same object follow within a short time (its
Event Log docs: `date_updated` changes, `date_created` and the id stay), so an event whose
`date_updated` differs from its `date_created` is named `{event.id}@{date_updated}`: a later
version of an event is not taken for a retry of the first (the first keeps the plain id).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

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


class CloseOptions(ProviderOptions):
    secret: Secrets  # the subscription's hex `signature_key`
    tolerance_s: int = Field(default=300, gt=0)

    @field_validator("secret")
    @classmethod
    def _hex(cls, value: Secrets) -> Secrets:
        for secret in secrets_of(value):
            try:
                bytes.fromhex(secret.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise ValueError("a Close signature_key is hex (as Close returns it)") from None
        return value


class CloseProvider(Provider[CloseOptions]):
    name = "close"
    Options = CloseOptions

    def __init__(self, options: CloseOptions) -> None:
        super().__init__(options)
        self._keys = [bytes.fromhex(s.decode("ascii")) for s in secrets_of(options.secret)]

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        raw_ts = header(request, "close-sig-timestamp")
        given = [header(request, "close-sig-hash").encode()]
        check_fresh(integer_timestamp(raw_ts), now_s, self.options.tolerance_s)
        signed_by_any(self._keys, raw_ts.encode() + request.body, given)
        return Verified(request=request, provider=self.name)

    def event_id(self, verified: Verified, payload: Any) -> str:
        event = payload.get("event") if isinstance(payload, dict) else None
        if not isinstance(event, dict) or not (event_id := id_text(event.get("id"))):
            return body_hash(verified.request.body)
        updated = id_text(event.get("date_updated"))
        if updated and updated != event.get("date_created"):
            return short_id(f"{event_id}@{updated}")
        return short_id(event_id)
