"""Provider name → class. Adding a provider is one module and one line here.

A provider's module is imported when a mapping first names it, so a process holds only the
providers its mappings use (each is a module and a pydantic options model: resident memory).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from bridge.providers.base import Provider

# name: "module:Class" under bridge.providers (tests/test_provider_base.py checks each cls.name)
MODULES = {
    "standard-webhooks": "standard_webhooks:StandardWebhooksProvider",
    "hmac": "generic_hmac:HmacProvider",
    "none": "none:NoneProvider",
    "typeform": "typeform:TypeformProvider",
    "tally": "tally:TallyProvider",
    "close": "close:CloseProvider",
    "webflow": "webflow:WebflowProvider",
    "calendly": "calendly:CalendlyProvider",
    "meta-lead-ads": "meta_lead_ads:MetaLeadAdsProvider",
    "hubspot": "hubspot:HubSpotProvider",
    "pipedrive": "pipedrive:PipedriveProvider",
    "basic-auth": "basic_auth:BasicAuthProvider",
    "jotform": "jotform:JotformProvider",
    "token": "generic_token:TokenProvider",
    "salesforce": "salesforce:SalesforceProvider",
}


class _Providers(Mapping[str, type[Provider[Any]]]):
    """The registry as a read-only mapping; looking a name up imports its module."""

    def __getitem__(self, name: str) -> type[Provider[Any]]:
        module, _, attr = MODULES[name].partition(":")
        cls: type[Provider[Any]] = getattr(importlib.import_module(f"bridge.providers.{module}"), attr)
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(MODULES)

    def __len__(self) -> int:
        return len(MODULES)


PROVIDERS: Mapping[str, type[Provider[Any]]] = _Providers()


def provider_class(name: str) -> type[Provider[Any]]:
    """The class for a `provider:` name; KeyError lists the known names."""
    if name not in MODULES:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(sorted(MODULES))}")
    return PROVIDERS[name]


def build_provider(name: str, options: dict[str, Any]) -> Provider[Any]:
    """Validate `verify:` options with the provider's model and build it (pydantic errors propagate)."""
    cls = provider_class(name)
    return cls(cls.Options.model_validate(options))
