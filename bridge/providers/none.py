"""`none`: no verification at all. Requires `insecure: true` and warns at every start."""

from __future__ import annotations

from typing import Literal

from bridge.providers.base import InboundRequest, Provider, ProviderOptions, Verified


class NoneOptions(ProviderOptions):
    insecure: Literal[True]


class NoneProvider(Provider[NoneOptions]):
    name = "none"
    Options = NoneOptions
    content_types = frozenset()  # any: parse() still refuses what is not JSON
    insecure = True

    def verify(self, request: InboundRequest, now_s: float) -> Verified:
        return Verified(request=request, provider=self.name)
