"""`jotform`: Jotform form webhooks, authenticated by a secret token in the URL.

Source: https://www.jotform.com/help/245-how-to-setup-a-webhook-with-jotform/ and
https://api.jotform.com/docs/ — Jotform signs nothing and cannot add headers, so the webhook
URL carries a token: `https://<host>/hooks/<name>?token=<token>` (the header named by `header`,
default `X-Webhook-Token`, works too, for relays). The body is `multipart/form-data` with
`formID`, `submissionID`, `formTitle`, `pretty`, … and `rawRequest`, a JSON string of the
answers, decoded into an object here (`rawRequest.q3_email`, …). The event id is
`submissionID`. An edited submission is posted again with the same `submissionID` and a non-empty
`action` (`edit`); its event id also names that edit (`{submissionID}:{action}:{rawRequest.event_id}`,
else `…:{rawRequest.submitDate}`, else a body hash), so that it is not answered "duplicate" and
dropped, while a new submission keeps the id it always had.
"""

from __future__ import annotations

from typing import Any

from bridge.providers.base import InboundRequest, Provider, Verified, body_hash, id_text, short_id
from bridge.providers.bodies import FORM_URLENCODED, MULTIPART, decode_json_fields, parse_body
from bridge.providers.checks import TokenOptions, check_token


class JotformOptions(TokenOptions):
    pass


class JotformProvider(Provider[JotformOptions]):
    name = "jotform"
    Options = JotformOptions
    content_types = frozenset({MULTIPART, FORM_URLENCODED})

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        check_token(request, self.options)
        return Verified(request=request, provider=self.name)

    def parse(self, verified: Verified) -> Any:
        fields = parse_body(verified.request.body, verified.request.headers.get("content-type", ""))
        return decode_json_fields(fields, ["rawRequest"])

    def event_id(self, verified: Verified, payload: Any) -> str:
        submission = id_text(payload.get("submissionID")) if isinstance(payload, dict) else None
        if not submission:
            return body_hash(verified.request.body)
        action = payload.get("action")
        if not isinstance(action, str) or not action.strip():
            return short_id(submission)  # a new submission (`action` empty)
        # An edit of the submission: the same submissionID as the submission and its other edits.
        raw = payload.get("rawRequest")
        edit = (
            (id_text(raw.get("event_id")) or id_text(raw.get("submitDate")))
            if isinstance(raw, dict)
            else None
        )
        return short_id(f"{submission}:{action}:{edit}") if edit else body_hash(verified.request.body)
