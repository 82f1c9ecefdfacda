"""`hubspot`: HubSpot app webhooks (batched CRM events), signature v3 (v2 and v1 on request).

Sources: https://developers.hubspot.com/docs/apps/legacy-apps/authentication/validating-requests
and the official SDK (HubSpot/hubspot-api-python, hubspot/utils/signature.py, whose test
vectors the tests reproduce).

- v3: `X-HubSpot-Signature-v3` is base64(HMAC-SHA256(client secret,
  method + URI + raw body + X-HubSpot-Request-Timestamp)); the timestamp is Unix milliseconds
  and HubSpot says to refuse requests older than 5 minutes (`tolerance_s`, both directions).
  In the URI, the URL-encoded characters HubSpot lists (%3A : %2F / %3F ? %40 @ %21 ! %24 $
  %27 ' %28 ( %29 ) %2A * %2C , %3B ;) are decoded first.
- v2: `X-HubSpot-Signature-Version: v2`, `X-HubSpot-Signature` = hex SHA-256 of
  client secret + method + URI + raw body (the URI exactly as called).
- v1: `X-HubSpot-Signature-Version: v1`, `X-HubSpot-Signature` = hex SHA-256 of
  client secret + raw body.

Only the versions listed in `versions` (default `[v3]`) are accepted; v1 and v2 sign no
timestamp, so a captured request can be replayed: enable them only for apps that need them.
The URI is `public_url` — the URL HubSpot calls, for when a proxy or ingress rewrites what the
app sees (the request's query string is appended when `public_url` has none) — else the URL as
received, and its https form when it was received as http (TLS ended at a proxy). A delivery is
a JSON array of events. HubSpot says an `eventId` "is not guaranteed to be unique" and one
target URL receives the events of every portal that installed the app, so each event is named
`{portalId}:{subscriptionId}:{eventId}` (all three stable across retries; `attemptNumber` is not
used); the event id is these names, sorted and joined (hashed when long).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from bridge.errors import Unauthorized
from bridge.providers.base import (
    InboundRequest,
    Provider,
    ProviderOptions,
    Secrets,
    Verified,
    any_equal,
    body_hash,
    id_text,
    secrets_of,
    short_id,
)
from bridge.providers.checks import check_fresh, digest, header, integer_timestamp

Version = Literal["v1", "v2", "v3"]

# The characters HubSpot decodes in the URI before signing v3 (its docs' table).
V3_DECODED = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip
V3_PATTERN = re.compile("|".join(V3_DECODED), re.IGNORECASE)


def decode_v3_uri(uri: str) -> str:
    return V3_PATTERN.sub(lambda match: V3_DECODED[match.group(0).upper()], uri)


class HubSpotOptions(ProviderOptions):
    secret: Secrets  # the app's client secret
    versions: list[Version] = Field(default_factory=lambda: list[Version](["v3"]), min_length=1)
    public_url: str | None = None
    tolerance_s: int = Field(default=300, gt=0)

    @field_validator("public_url")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("public_url must be an absolute http(s) URL")
        return value


class HubSpotProvider(Provider[HubSpotOptions]):
    name = "hubspot"
    Options = HubSpotOptions
    uses_url = True

    def __init__(self, options: HubSpotOptions) -> None:
        super().__init__(options)
        self._secrets = secrets_of(options.secret)

    def uri(self, request: InboundRequest) -> str:
        """The URI HubSpot signed: `public_url` (plus the request's query) or the URL as received."""
        public_url = self.options.public_url
        if public_url is None:
            return request.url
        query = urlsplit(request.url).query
        if query and "?" not in public_url:
            return f"{public_url}?{query}"
        return public_url

    def uris(self, request: InboundRequest) -> list[str]:
        """The URIs HubSpot may have signed. HubSpot calls HTTPS target URLs; where TLS ends at a
        proxy or ingress, the app sees `http://` (uvicorn trusts X-Forwarded-Proto only from
        127.0.0.1 unless FORWARDED_ALLOW_IPS is set), so without `public_url` the https form of
        the received URL is tried too. The scheme flip gives a forger nothing: the HMAC still
        covers host, path, query, body and timestamp."""
        uri = self.uri(request)
        if self.options.public_url is None and uri.startswith("http://"):
            return [uri, "https://" + uri[len("http://") :]]
        return [uri]

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        legacy_version = request.headers.get("x-hubspot-signature-version", "")
        # The strongest signature present decides, whatever the order of `versions`: a request
        # that carries v3 (signed with a timestamp) is never let through on its v1 or v2.
        for version in sorted(set(self.options.versions), reverse=True):
            if version == "v3" and "x-hubspot-signature-v3" in request.headers:
                self._verify_v3(request, now_s)
                return Verified(request=request, provider=self.name, facts={"signature": "v3"})
            if version in ("v1", "v2") and legacy_version == version:
                self._verify_legacy(request, version)
                return Verified(request=request, provider=self.name, facts={"signature": version})
        raise Unauthorized("no accepted HubSpot signature version present")

    def _verify_v3(self, request: InboundRequest, now_s: float) -> None:
        # A space is not base64: it is a '+' that something on the way decoded as a form
        # (reported on HubSpot's community forum, "V3 signature validation doesn't work for
        # space"). Taking it back gives a forger nothing; it still has to match the HMAC.
        given = [header(request, "X-HubSpot-Signature-v3").replace(" ", "+").encode()]
        raw_ts = header(request, "X-HubSpot-Request-Timestamp")
        check_fresh(integer_timestamp(raw_ts) / 1000, now_s, self.options.tolerance_s)
        messages = [
            (request.method + decode_v3_uri(uri)).encode() + request.body + raw_ts.encode()
            for uri in self.uris(request)
        ]
        expected = [base64.b64encode(digest(secret, m)) for m in messages for secret in self._secrets]
        if not any_equal(given, expected):
            raise Unauthorized("no matching signature")

    def _verify_legacy(self, request: InboundRequest, version: Version) -> None:
        given = [header(request, "X-HubSpot-Signature").lower().encode()]
        signed = [request.body]
        if version == "v2":
            signed = [(request.method + uri).encode() + request.body for uri in self.uris(request)]
        expected = [
            hashlib.sha256(secret + text).hexdigest().encode() for text in signed for secret in self._secrets
        ]
        if not any_equal(given, expected):
            raise Unauthorized("no matching signature")

    def event_id(self, verified: Verified, payload: Any) -> str:
        events = payload if isinstance(payload, list) else [payload]
        ids = [event_name(event) for event in events]
        if not ids or None in ids:
            return body_hash(verified.request.body)
        return short_id(",".join(sorted((i for i in ids if i), key=lambda i: (len(i), i))))


def event_name(event: Any) -> str | None:
    """`{portalId}:{subscriptionId}:{eventId}` ('' for a missing part); None without an eventId."""
    event_id = id_text(event.get("eventId")) if isinstance(event, dict) else None
    if event_id is None:
        return None
    scope = [id_text(event.get(key)) or "" for key in ("portalId", "subscriptionId")]
    return ":".join([*scope, event_id])
