"""`none`: no verification at all. Requires `insecure: true` and warns at every start.

For local experiments only: anybody who can reach the URL can create leads. Any JSON,
urlencoded or multipart body is accepted (see `generic`); the event id is a hash of the body, or
the field `event_id_field` names.
"""

from __future__ import annotations

from typing import Literal

from bridge.providers.base import InboundRequest, Verified
from bridge.providers.generic import GenericBodyOptions, GenericProvider


class NoneOptions(GenericBodyOptions):
    insecure: Literal[True]


class NoneProvider(GenericProvider[NoneOptions]):
    name = "none"
    Options = NoneOptions
    content_types = frozenset()  # any: parse() still refuses what it cannot read (415/400)
    insecure = True

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        return Verified(request=request, provider=self.name)
