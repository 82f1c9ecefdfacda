"""Inbound adapters: verification, body parsing and event ids, one module per provider."""

from bridge.providers.base import InboundRequest, Provider, ProviderOptions, ProviderResponse, Verified
from bridge.providers.registry import PROVIDERS, build_provider, provider_class

__all__ = [
    "PROVIDERS",
    "InboundRequest",
    "Provider",
    "ProviderOptions",
    "ProviderResponse",
    "Verified",
    "build_provider",
    "provider_class",
]
