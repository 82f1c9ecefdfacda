"""`webflow`: Webflow webhooks, signed with the webhook's secret (or the OAuth client secret).

Sources: https://developers.webflow.com/data/docs/working-with-webhooks ("Validating request
signatures") and the official SDK's `verifySignature` (webflow/js-webflow-api,
src/wrapper/WebhooksClient.ts): `x-webflow-signature` is the hex HMAC-SHA256 of
`{x-webflow-timestamp}:{raw body}`, keyed with the secret's UTF-8 bytes; the timestamp is Unix
**milliseconds**. Webflow says to refuse requests older than 5 minutes; we refuse timestamps more
than `tolerance_s` (300) away in either direction. Webflow counts only an exact 200 as success,
so accepted deliveries are answered 200. The event id of a `form_submission` is
`form_submission:payload.id` (the submission's id). In the other triggers `payload.id`, where
there is one, names the CMS item or user (the same for each of its changes), so their event id
is a hash of the body.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

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

# The one trigger whose `payload.id` identifies the event itself (the submission).
FORM_SUBMISSION = "form_submission"


class WebflowOptions(ProviderOptions):
    secret: Secrets
    tolerance_s: int = Field(default=300, gt=0)


class WebflowProvider(Provider[WebflowOptions]):
    name = "webflow"
    Options = WebflowOptions
    accepted_status: ClassVar[int] = 200

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        raw_ts = header(request, "x-webflow-timestamp")
        given = [header(request, "x-webflow-signature").encode()]
        check_fresh(integer_timestamp(raw_ts) / 1000, now_s, self.options.tolerance_s)
        signed_by_any(secrets_of(self.options.secret), raw_ts.encode() + b":" + request.body, given)
        return Verified(request=request, provider=self.name)

    def event_id(self, verified: Verified, payload: Any) -> str:
        if (
            isinstance(payload, dict)
            and payload.get("triggerType") == FORM_SUBMISSION
            and isinstance(payload.get("payload"), dict)
        ):
            submission = id_text(payload["payload"].get("id"))
            if submission:
                return short_id(f"{FORM_SUBMISSION}:{submission}")
        return body_hash(verified.request.body)
