"""`none`: no verification at all. Requires `insecure: true` and warns at every start.

For local experiments only: anybody who can reach the URL can create leads. Any JSON,
urlencoded or multipart body is accepted (see `generic`); the event id is a hash of the body.
"""

from __future__ import annotations

from typing import Any, Literal

from bridge.providers.base import InboundRequest, Provider, Verified
from bridge.providers.generic import GenericBodyOptions, parse_generic


class NoneOptions(GenericBodyOptions):
    insecure: Literal[True]


class NoneProvider(Provider[NoneOptions]):
    name = "none"
    Options = NoneOptions
    content_types = frozenset()  # any: parse() still refuses what it cannot read (415/400)
    insecure = True

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        return Verified(request=request, provider=self.name)

    def parse(self, verified: Verified) -> Any:
        return parse_generic(verified, self.options.json_fields)
