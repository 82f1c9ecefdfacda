"""`pipedrive`: Pipedrive webhooks (v1 and v2 payloads), protected by HTTP basic auth.

Sources: https://pipedrive.readme.io/docs/guide-for-webhooks-v2 and
https://pipedrive.readme.io/docs/guide-for-webhooks — Pipedrive signs nothing; a webhook can
carry an "HTTP Auth username and password" which Pipedrive sends as `Authorization: Basic …`
on every request. Both are checked (the password in constant time, a list during rotation).

Event ids: a v2 payload (`meta.version == "2.0"`) has a unique event id in `meta.id`. In v1,
`meta.id` is the *object's* id (the same for every change of one deal), so the id is
`v1:{meta.object}:{meta.id}:{meta.action}:{meta.timestamp_micro}`, which stays the same when
Pipedrive retries (`retry` changes, the event's time does not). Otherwise a body hash.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from bridge.providers.base import (
    InboundRequest,
    Provider,
    ProviderOptions,
    Secrets,
    Verified,
    body_hash,
    id_text,
    short_id,
)
from bridge.providers.checks import check_basic


class PipedriveOptions(ProviderOptions):
    username: str = Field(min_length=1)
    password: Secrets


class PipedriveProvider(Provider[PipedriveOptions]):
    name = "pipedrive"
    Options = PipedriveOptions

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        check_basic(request, self.options.username, self.options.password)
        return Verified(request=request, provider=self.name)

    def event_id(self, verified: Verified, payload: Any) -> str:
        meta = payload.get("meta") if isinstance(payload, dict) else None
        if isinstance(meta, dict):
            if str(meta.get("version", "")).startswith("2"):
                event_id = id_text(meta.get("id"))
                if event_id:
                    return short_id(event_id)
            else:
                when = id_text(meta.get("timestamp_micro")) or id_text(meta.get("timestamp"))
                parts = [id_text(meta.get(key)) for key in ("object", "id", "action")] + [when]
                if all(parts):
                    return short_id("v1:" + ":".join(p for p in parts if p))
        return body_hash(verified.request.body)
