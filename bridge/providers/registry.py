"""Provider name → class. Adding a provider is one module and one line here."""

from __future__ import annotations

from typing import Any

from bridge.providers.base import Provider
from bridge.providers.none import NoneProvider
from bridge.providers.standard_webhooks import StandardWebhooksProvider

PROVIDERS: dict[str, type[Provider[Any]]] = {
    cls.name: cls
    for cls in (
        StandardWebhooksProvider,
        NoneProvider,
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
