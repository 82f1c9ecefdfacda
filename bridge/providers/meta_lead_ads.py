"""`meta-lead-ads`: Meta (Facebook) Lead Ads webhooks on the `leadgen` field of a Page.

Sources: https://developers.facebook.com/docs/graph-api/webhooks/getting-started and
https://developers.facebook.com/docs/graph-api/webhooks/getting-started/webhooks-for-leadgen.

- Subscription handshake: a GET with `hub.mode=subscribe`, `hub.verify_token` (the string typed
  into the App Dashboard, our `verify_token`) and `hub.challenge`; we echo the challenge as
  text/plain when the mode and token match, else answer 403.
- Event notifications: a JSON POST signed in `X-Hub-Signature-256: sha256=<hex>`, the
  HMAC-SHA256 of the raw payload keyed with the App Secret (`app_secret`). Meta signs the
  escaped-unicode payload it sends, so the raw bytes are verified as received. No timestamp.
- One notification can carry several leads (`entry[].changes[]`, each with a `leadgen_id` only;
  the mapping fetches the lead with `enrich`), so the event id is a hash of the body.
"""

from __future__ import annotations

from typing import Any

from bridge.providers.base import (
    InboundRequest,
    Provider,
    ProviderOptions,
    ProviderResponse,
    Secrets,
    Verified,
    any_equal,
    body_hash,
    secrets_of,
)
from bridge.providers.checks import header, signed_by_any

PREFIX = "sha256="
MAX_CHALLENGE_CHARS = 256
FORBIDDEN = ProviderResponse(status=403, body=b"forbidden", media_type="text/plain")


class MetaLeadAdsOptions(ProviderOptions):
    app_secret: Secrets
    verify_token: Secrets


class MetaLeadAdsProvider(Provider[MetaLeadAdsOptions]):
    name = "meta-lead-ads"
    Options = MetaLeadAdsOptions

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        value = header(request, "X-Hub-Signature-256")
        given = [value[len(PREFIX) :].encode()] if value.startswith(PREFIX) else []
        signed_by_any(secrets_of(self.options.app_secret), request.body, given)
        return Verified(request=request, provider=self.name)

    def event_id(self, verified: Verified, payload: Any) -> str:
        return body_hash(verified.request.body)

    def handshake(self, request: InboundRequest) -> ProviderResponse | None:
        if request.method != "GET":
            return None
        mode = request.query.get("hub.mode", "")
        token = request.query.get("hub.verify_token", "")
        challenge = request.query.get("hub.challenge", "")
        token_ok = bool(token) and any_equal([token.encode()], secrets_of(self.options.verify_token))
        challenge_ok = (
            0 < len(challenge) <= MAX_CHALLENGE_CHARS and challenge.isprintable() and challenge.isascii()
        )
        if mode != "subscribe" or not token_ok or not challenge_ok:
            return FORBIDDEN
        return ProviderResponse(status=200, body=challenge.encode(), media_type="text/plain")
