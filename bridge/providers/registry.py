"""Provider name → class. Adding a provider is one module and one line here."""

from __future__ import annotations

from typing import Any

from bridge.providers.base import Provider
from bridge.providers.basic_auth import BasicAuthProvider
from bridge.providers.calendly import CalendlyProvider
from bridge.providers.close import CloseProvider
from bridge.providers.generic_hmac import HmacProvider
from bridge.providers.generic_token import TokenProvider
from bridge.providers.hubspot import HubSpotProvider
from bridge.providers.jotform import JotformProvider
from bridge.providers.meta_lead_ads import MetaLeadAdsProvider
from bridge.providers.none import NoneProvider
from bridge.providers.pipedrive import PipedriveProvider
from bridge.providers.salesforce import SalesforceProvider
from bridge.providers.standard_webhooks import StandardWebhooksProvider
from bridge.providers.tally import TallyProvider
from bridge.providers.typeform import TypeformProvider
from bridge.providers.webflow import WebflowProvider

PROVIDERS: dict[str, type[Provider[Any]]] = {
    cls.name: cls
    for cls in (
        StandardWebhooksProvider,
        HmacProvider,
        NoneProvider,
        TypeformProvider,
        TallyProvider,
        CloseProvider,
        WebflowProvider,
        CalendlyProvider,
        MetaLeadAdsProvider,
        HubSpotProvider,
        PipedriveProvider,
        BasicAuthProvider,
        JotformProvider,
        TokenProvider,
        SalesforceProvider,
    )
}


def provider_class(name: str) -> type[Provider[Any]]:
    """The class for a `provider:` name; KeyError lists the known names."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDERS))}") from None


def build_provider(name: str, options: dict[str, Any]) -> Provider[Any]:
    """Validate `verify:` options with the provider's model and build it (pydantic errors propagate)."""
    cls = provider_class(name)
    return cls(cls.Options.model_validate(options))
