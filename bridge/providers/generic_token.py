"""`token`: a shared secret token in the query string or a header, for tools that cannot sign.

The token is read from the `token` query parameter (`https://…/hooks/<name>?token=…`) or from
the header named by `header` (default `X-Webhook-Token`) and compared in constant time with
the configured token(s). Nothing is signed: use HTTPS, and prefer the header where the tool
allows it (query strings end up in access logs). Any JSON, urlencoded or multipart body is
accepted (see `generic`); the event id is a hash of the body, or the field `event_id_field` names.
"""

from __future__ import annotations

from bridge.providers.base import InboundRequest, Verified
from bridge.providers.checks import TokenOptions, check_token
from bridge.providers.generic import GenericBodyOptions, GenericProvider


class GenericTokenOptions(TokenOptions, GenericBodyOptions):
    pass


class TokenProvider(GenericProvider[GenericTokenOptions]):
    name = "token"
    Options = GenericTokenOptions

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        self.check_content_type(request)
        check_token(request, self.options)
        return Verified(request=request, provider=self.name)
