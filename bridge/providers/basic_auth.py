"""`basic-auth`: HTTP basic auth (RFC 7617) for tools that can send fixed credentials.

The request must carry `Authorization: Basic base64(username:password)` with the configured
`username` and one of the configured passwords (a list during rotation); both parts are always
compared in constant time. Nothing is signed, so use it over HTTPS only. Any JSON, urlencoded or
multipart body is accepted (see `generic`); the event id is a hash of the body, or the field
`event_id_field` names.
"""

from __future__ import annotations

from pydantic import Field

from bridge.providers.base import InboundRequest, Secrets, Verified
from bridge.providers.checks import check_basic
from bridge.providers.generic import GenericBodyOptions, GenericProvider


class BasicAuthOptions(GenericBodyOptions):
    username: str = Field(min_length=1)
    password: Secrets


class BasicAuthProvider(GenericProvider[BasicAuthOptions]):
    name = "basic-auth"
    Options = BasicAuthOptions

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        check_basic(request, self.options.username, self.options.password)
        return Verified(request=request, provider=self.name)
